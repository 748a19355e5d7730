"""The model registry. Every model is `features` (image -> penultimate vector) then `head`.

The shared split lets the dashboard take embeddings, feature maps and saliency from any model
without knowing its layers; adding a model is one builder and one registry entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class Classifier(nn.Module):
    """`features` maps a normalised Nx1x28x28 batch to vectors; `head` maps those to 10 logits."""

    def __init__(self, features: nn.Sequential, head: nn.Linear):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def conv_block(c_in: int, c_out: int, kernel: int = 3, pool: bool = False) -> list[nn.Module]:
    """Conv, batch-norm, ReLU (and an optional 2x2 max-pool): the unit of the deeper nets."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


def build_linear(dropout: float) -> Classifier:
    """Softmax regression: one weight vector per digit, a learned version of the mean image."""
    return Classifier(nn.Sequential(nn.Flatten(), nn.Dropout(dropout)), nn.Linear(784, 10))


def build_mlp(dropout: float) -> Classifier:
    """784 -> 128 -> 10 with ReLU: the smallest network with a hidden layer (the MLP guide's SimpleNet)."""
    return Classifier(
        nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Dropout(dropout)),
        nn.Linear(128, 10),
    )


def build_cnn_small(dropout: float) -> Classifier:
    """conv 1->16->32 (3x3, pad 1, ReLU, pool) then 1568 -> 128 -> 10: a small, quick CNN that
    reaches ~98% in one epoch (after the complete CNN guide's network)."""
    return Classifier(
        nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(dropout),
        ),
        nn.Linear(128, 10),
    )


def build_cnn_classic(dropout: float) -> Classifier:
    """The classic PyTorch tutorial net: 5x5 convs with 10 and 20 channels, then 320 -> 50 -> 10."""
    return Classifier(
        nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(320, 50), nn.ReLU(), nn.Dropout(dropout),
        ),
        nn.Linear(50, 10),
    )


def build_cnn_fast(dropout: float) -> Classifier:
    """Few, cheap convolutions with batch-norm: the shortest CPU time to 99% test accuracy."""
    return Classifier(
        nn.Sequential(
            nn.Conv2d(1, 16, 5, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 24 -> 12
            nn.Conv2d(16, 32, 5, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8 -> 4
            nn.Flatten(), nn.Dropout(dropout),
        ),
        nn.Linear(32 * 4 * 4, 10),
    )


def build_cnn_sprint(dropout: float) -> Classifier:
    """The least CPU work that still reaches 99% in one epoch (each choice measured on a 2-core
    CPU): 8 first-layer filters, not 16, halve the second convolution's work; pooling before
    batch norm normalises a quarter of the pixels; the first layer has no batch norm (on 8
    channels it cost 15% of the time for no accuracy); a 128-unit hidden layer costs little
    and buys accuracy."""
    return Classifier(
        nn.Sequential(
            nn.Conv2d(1, 8, 5, bias=False), nn.MaxPool2d(2), nn.ReLU(inplace=True),  # 24 -> 12
            nn.Conv2d(8, 32, 5, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(32), nn.ReLU(inplace=True),  # 8 -> 4
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(32 * 4 * 4, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
        ),
        nn.Linear(128, 10),
    )


def build_cnn_best(dropout: float) -> Classifier:
    """A small VGG-style net (32-32-64-64 channels, batch-norm) for the best accuracy in minutes."""
    return Classifier(
        nn.Sequential(
            *conv_block(1, 32), *conv_block(32, 32, pool=True),  # 28 -> 14
            *conv_block(32, 64), *conv_block(64, 64, pool=True),  # 14 -> 7
            *conv_block(64, 128, pool=True),  # 7 -> 3
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(128 * 3 * 3, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        ),
        nn.Linear(128, 10),
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[float], Classifier]
    default_dropout: float = 0.0

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.build(0.0).parameters())


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("linear", "No hidden layer: one weight per pixel and digit. Trains in seconds; the baseline.",
                  build_linear),
        ModelSpec("mlp", "One hidden layer of 128 ReLU units. Quick, but blind to which pixels are neighbours.",
                  build_mlp),
        ModelSpec("cnn-small", "Two 3x3 conv layers (16, 32 filters) with pooling, then 128 units. "
                               "Reads drawings well.", build_cnn_small),
        ModelSpec("cnn-classic", "Two 5x5 conv layers (10, 20 filters) with dropout, then 50 units: tiny yet strong.",
                  build_cnn_classic, 0.5),
        ModelSpec("cnn-fast", "Two 5x5 conv layers (16, 32 filters) with batch-norm: 99.1% in three epochs.",
                  build_cnn_fast),
        ModelSpec("cnn-sprint", "Two 5x5 conv layers (8, 32 filters), pooling, batch-norm, then 128 units: "
                                "the least work per image that still reaches 99% in one epoch.", build_cnn_sprint),
        ModelSpec("cnn-best", "Five 3x3 conv layers (32 to 128 filters), batch-norm and dropout: the most accurate.",
                  build_cnn_best, 0.25),
    )
}


def build_model(name: str, dropout: float = 0.0) -> Classifier:
    """Instantiate a registered model; raises KeyError with the known names otherwise."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name].build(dropout)


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
