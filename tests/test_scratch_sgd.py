"""The seed notebook's hand-written SGD step (`w -= lr * w.grad`) is plain SGD: training with
optimizer="scratch-sgd" ends with the same weights as torch.optim.SGD without momentum."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mnist_core.engine.config import TrainConfig
from mnist_core.engine.data import Mnist
from mnist_core.engine.models import build_model
from mnist_core.engine.train import train


def random_mnist(n_train: int = 512, n_test: int = 64, seed: int = 0) -> Mnist:
    g = torch.Generator().manual_seed(seed)
    return Mnist(
        train_images=torch.randint(0, 256, (n_train, 28, 28), generator=g, dtype=torch.uint8),
        train_labels=torch.randint(0, 10, (n_train,), generator=g),
        test_images=torch.randint(0, 256, (n_test, 28, 28), generator=g, dtype=torch.uint8),
        test_labels=torch.randint(0, 10, (n_test,), generator=g),
        source="synthetic",
        folder=Path("."),
    )


@pytest.mark.parametrize("model, weight_decay", [("linear", 0.0), ("mlp", 0.0), ("mlp", 1e-3)])
def test_scratch_sgd_matches_torch_sgd(model, weight_decay):
    data = random_mnist()
    # A small rate keeps training on random pixels stable: with a large one, last-bit rounding
    # differences (torch fuses lr * grad into one add) grow step by step beyond float tolerance.
    base = TrainConfig(model=model, epochs=2, batch_size=64, lr=0.01, weight_decay=weight_decay,
                       val_split=0.1, seed=3, device="cpu")
    torch.manual_seed(base.seed)  # as train() does, so these are its starting weights
    initial = build_model(model).state_dict()
    scratch = train(base.replace(optimizer="scratch-sgd"), data, report_every=1000)
    reference = train(base.replace(optimizer="sgd", momentum=0.0), data, report_every=1000)
    assert scratch.status == reference.status == "finished" and scratch.steps_done == reference.steps_done == 16
    mine, theirs = scratch.model.state_dict(), reference.model.state_dict()
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.allclose(mine[name], theirs[name], atol=1e-6), name
        assert not torch.allclose(mine[name], initial[name], atol=1e-4), f"{name} never moved"
