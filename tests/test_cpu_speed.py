"""The CPU rewrites (mnist_core/cpu_speed.py) change speed, never what a model computes."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from mnist_core.config import RECIPES, TrainConfig
from mnist_core.cpu_speed import for_cpu_training, keep_freed_memory, pool_before_relu
from mnist_core.models import MODELS, build_model
from mnist_core.train import make_optimizer, train
from tests.synthetic import synthetic_mnist


@pytest.mark.parametrize("name", list(MODELS))
def test_rewritten_model_gives_the_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    plain = build_model(name, dropout=0.0)
    fast = for_cpu_training(copy.deepcopy(plain))
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in plain.named_parameters()]
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    for model in (plain, fast):
        model.train()
        nn.functional.cross_entropy(model(x), y).backward()
    assert torch.equal(plain(x), fast(x))
    for (label, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert torch.equal(p.grad, q.grad), label
    plain.eval()
    fast.eval()
    assert torch.equal(plain(x), fast(x))


def test_relu_then_pool_becomes_pool_then_relu_and_nothing_else_moves():
    layers = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.MaxPool2d(2),
                           nn.ReLU(), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    kinds = [type(m).__name__ for m in pool_before_relu(layers)]
    assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "BatchNorm2d", "MaxPool2d", "ReLU"]


def test_train_hands_back_the_registered_layers():
    result = train(TrainConfig(model="cnn-small", epochs=1, batch_size=64, val_split=0.0), synthetic_mnist())
    registered = [type(m) for m in build_model("cnn-small").features]
    assert [type(m) for m in result.model.features] == registered


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_adam_adamw_and_sgd_use_their_fused_kernels_on_the_cpu(optimizer):
    params = list(nn.Linear(3, 2).parameters())
    made = make_optimizer(TrainConfig(optimizer=optimizer), params)
    assert made.defaults["fused"] is True


def test_the_first_recipe_is_the_sprint_and_every_recipe_keeps_a_validation_split():
    assert next(iter(RECIPES)) == "cnn-sprint"
    assert all(recipe.config.val_split > 0 and recipe.purpose for recipe in RECIPES.values())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_training_steps_reuse_freed_memory_instead_of_page_faulting():
    """Without keep_freed_memory, each cnn-small step at batch 64 page-faulted 1,300-2,400 times
    (its activations given back to the kernel and mapped afresh): a third of the step's time."""
    import resource

    assert keep_freed_memory()
    torch.manual_seed(0)
    model = for_cpu_training(build_model("cnn-small")).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))

    def steps(count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    steps(5)  # the first steps grow the heap to the step's working set
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    steps(20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults / 20 < 100, f"{faults / 20:.0f} page faults per step"
