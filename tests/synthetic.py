"""A tiny, learnable stand-in for MNIST: ten random templates plus noise."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from mnist_core.engine.data import Mnist


def synthetic_mnist(n_train: int = 600, n_test: int = 200, seed: int = 0) -> Mnist:
    g = torch.Generator().manual_seed(seed)
    templates = (torch.rand(10, 28, 28, generator=g) > 0.7).float() * 200

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 10
        noise = torch.rand(n, 28, 28, generator=g) * 80
        return (templates[labels] + noise).clamp(0, 255).to(torch.uint8), labels.to(torch.int64)

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    return Mnist(train_x, train_y, test_x, test_y, source="synthetic", folder=Path("."))



def idx_images(images: np.ndarray, magic: int = 0x803) -> bytes:
    """Images in the IDX encoding MNIST is published in: magic, dimensions, then the bytes."""
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


FAILING_SEED = 990_001  # a run with this seed crashes inside `train_or_crash`


def train_or_crash(config, data, **kwargs):
    """The real trainer, except that runs seeded FAILING_SEED crash as a full disk would: injected
    into warm workers (`JobQueue(train=...)`) to test how a crash inside training ends."""
    from mnist_core.engine.train import train

    if config.seed == FAILING_SEED:
        raise OSError("disk gone")
    return train(config, data, **kwargs)


def train_here(store, config, data) -> str:
    """Train `config` in this test process at once and return its status. The run is claimed
    by this process as it is created, so no warm worker of a page's queue can take it."""
    import os

    from mnist_core.service.lifecycle import HOST, run_id_for
    from mnist_core.service.jobs import execute

    run_id = run_id_for(config)
    store.enqueue(run_id, config.to_dict(), "tests", worker=(os.getpid(), HOST))
    return execute(store, run_id, config, data)
