"""The model registry. Every model is `features` (image -> penultimate vector) then `head`.

The shared split lets the dashboard take embeddings, feature maps and saliency from any model
without knowing its layers; adding a model is one builder and one registry entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def conv_block(
    c_in: int, c_out: int, kernel: int = 3, pool: bool = False, padding: int | None = None
) -> list[nn.Module]:
    """Conv, batch-norm, ReLU (and an optional 2x2 max-pool): the unit of the deeper nets. The
    padding keeps the map's size unless given."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2 if padding is None else padding, bias=False),
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


def hidden_layer(width: int, dropout: float) -> list[nn.Module]:
    """cnn-best's last hidden layer: the flattened maps to 128 units, with batch norm and dropout."""
    return [
        nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(width, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    ]


def build_cnn_best(dropout: float) -> Classifier:
    """Five 3x3 convolutions with batch norm (16-32-64-64-128 channels), for the best accuracy in
    minutes on two CPU cores. The first four convolutions add no padding: each sees only real
    pixels, and the maps shrink 28 -> 26 -> 24 (pool) 12 -> 10 -> 8 (pool) 4, so every layer works
    on about 0.7x the pixels of padded ones; the first has 16 filters, not 32, because a 3x3 patch
    of a one-channel image holds only 9 numbers, and that halves the costliest convolution."""
    return Classifier(
        nn.Sequential(
            *conv_block(1, 16, padding=0), *conv_block(16, 32, padding=0, pool=True),  # 28 -> 26 -> 24 -> 12
            *conv_block(32, 64, padding=0), *conv_block(64, 64, padding=0, pool=True),  # 12 -> 10 -> 8 -> 4
            *conv_block(64, 128, pool=True),  # 4 -> 2
            *hidden_layer(128 * 2 * 2, dropout),
        ),
        nn.Linear(128, 10),
    )


def build_cnn_best_2026_11(dropout: float) -> Classifier:
    """cnn-best until 2026-11-29 (32-32-64-64-128 channels, every convolution padded): kept so that
    runs stored with it still load. 2.7x today's multiply-adds, for an accuracy within the seed's spread."""
    return Classifier(
        nn.Sequential(
            *conv_block(1, 32), *conv_block(32, 32, pool=True),  # 28 -> 14
            *conv_block(32, 64), *conv_block(64, 64, pool=True),  # 14 -> 7
            *conv_block(64, 128, pool=True),  # 7 -> 3
            *hidden_layer(128 * 3 * 3, dropout),
        ),
        nn.Linear(128, 10),
    )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[float], Classifier]
    default_dropout: float = 0.0
    # Builders of this name's earlier versions, newest first: stored runs' weights may fit one.
    earlier: tuple[Callable[[float], Classifier], ...] = ()

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
        ModelSpec("cnn-best", "Five 3x3 conv layers (16 to 128 filters, the first four unpadded), batch-norm "
                              "and dropout: the most accurate.",
                  build_cnn_best, 0.25, earlier=(build_cnn_best_2026_11,)),
    )
}


def build_model(name: str, dropout: float = 0.0) -> Classifier:
    """Instantiate a registered model; raises KeyError with the known names otherwise."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name].build(dropout)


def build_for_weights(name: str, dropout: float, weights: Mapping[str, torch.Tensor]) -> Classifier:
    """The model `name` in the version whose layers fit `weights`: the current one, else an
    earlier one, so that a run stored before its model changed still loads (a model's versions
    differ in some layer's shape). Raises ValueError when none fits."""
    shapes = {key: tuple(value.shape) for key, value in weights.items()}
    model = build_model(name, dropout)  # KeyError, with the known names, for an unknown one
    for candidate in (model, *(build(dropout) for build in MODELS[name].earlier)):
        if {key: tuple(value.shape) for key, value in candidate.state_dict().items()} == shapes:
            return candidate
    raise ValueError(f"the stored weights do not fit any version of the model {name!r}")


def model_version(name: str) -> int:
    """How many times the model `name` has changed since runs were first stored with it (0 for
    most; an unknown name too)."""
    return len(MODELS[name].earlier) if name in MODELS else 0


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, BATCH_NORMS) for m in model.modules())
