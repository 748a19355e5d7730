"""A tiny, learnable stand-in for MNIST: ten random templates plus noise."""

from __future__ import annotations

from pathlib import Path

import torch

from mnist_core.data import Mnist


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
