"""Baselines that need no training: the mean image of each digit, and distance to it.

The seed note "MNIST From Scratch" benchmarks pixel similarity before training anything: any
model worth its training time has to beat "which average digit does this image look most
like?". Everything here is whole-tensor broadcasting, so the full test set takes a fraction of
a second on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mnist_core.engine.evaluate import confusion_counts

METRICS = ("l1", "l2")
NUM_CLASSES = 10
# Images per chunk. Small blocks stay in the CPU cache: on MNIST, 512-image blocks compute the
# distances about ten times faster than one 10000-image block (which would also need 300 MB).
DEFAULT_CHUNK = 512
MEAN_CHUNK = 4096


def as_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Pixels as float32 in [0, 1]: uint8 is divided by 255, floats are taken as already scaled."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if images.is_floating_point():
        return images.to(torch.float32)
    raise ValueError(f"images must be uint8 or floating point, got {images.dtype}.")


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Require an N x H x W stack: a single image or a flattened batch is a caller's mistake."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}.")
    if images.ndim != 3:
        raise ValueError(f"{name} must be N x H x W, got shape {tuple(images.shape)}.")


def check_labels(labels: torch.Tensor, count: int, name: str = "labels") -> None:
    """Labels must be one digit 0..9 per image."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}.")
    if labels.ndim != 1 or len(labels) != count:
        raise ValueError(f"{name} must be 1-D with one label per image ({count}), "
                         f"got shape {tuple(labels.shape)}.")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integers, got {labels.dtype}.")
    if count and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise ValueError(f"{name} must be digits 0..9, found {int(labels.min())}.."
                         f"{int(labels.max())}.")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")


def check_digit(digit: int, name: str) -> None:
    if not isinstance(digit, (int, np.integer)) or not 0 <= int(digit) < NUM_CLASSES:
        raise ValueError(f"{name} must be a digit 0..9, got {digit!r}.")


def mean_images(
    images: torch.Tensor, labels: torch.Tensor, chunk: int = MEAN_CHUNK
) -> torch.Tensor:
    """The average image of each digit, float32 10 x H x W in [0, 1].

    Sums are accumulated per chunk with `index_add_`, so memory stays bounded on the full
    training set; with uint8 input the float32 sums are of integers below 2**24, hence exact.
    Raises ValueError when a digit has no images, since its mean would be undefined.
    """
    check_images(images)
    check_labels(labels, len(images))
    n, height, width = images.shape
    sums = torch.zeros(NUM_CLASSES, height * width, dtype=torch.float32)
    flat = images.reshape(n, -1)
    labels = labels.to(torch.int64)
    for start in range(0, n, chunk):
        block = flat[start : start + chunk].to(torch.float32)
        sums.index_add_(0, labels[start : start + chunk], block)
    counts = torch.bincount(labels, minlength=NUM_CLASSES)
    empty = [d for d in range(NUM_CLASSES) if counts[d] == 0]
    if empty:
        raise ValueError(f"no images of digit(s) {empty}: cannot form their mean image.")
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    means = sums / (counts.to(torch.float32).unsqueeze(1) * scale)
    return means.reshape(NUM_CLASSES, height, width)


def distances(
    images: torch.Tensor, means: torch.Tensor, metric: str = "l2", chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """N x K distances of every image to every mean image (L1: sum |d|; L2: sqrt sum d**2).

    Direct differences rather than the |x|^2 - 2x.m + |m|^2 expansion: exact, and a row's
    result does not depend on how the batch is chunked.
    """
    check_images(images)
    check_images(means, "means")
    check_metric(metric)
    if images.shape[1:] != means.shape[1:]:
        raise ValueError(f"images are {tuple(images.shape[1:])} but means are "
                         f"{tuple(means.shape[1:])}.")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}.")
    centres = as_unit_float(means).reshape(1, len(means), -1)
    flat = images.reshape(len(images), -1)
    out = torch.empty(len(images), len(means), dtype=torch.float32)
    for start in range(0, len(images), chunk):
        diff = as_unit_float(flat[start : start + chunk]).unsqueeze(1) - centres
        if metric == "l1":
            out[start : start + chunk] = diff.abs_().sum(2)
        else:
            out[start : start + chunk] = diff.pow_(2).sum(2).sqrt_()
    return out


def nearest_mean_predict(
    images: torch.Tensor, means: torch.Tensor, metric: str = "l2", chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Predict each image's digit as the one whose mean image is nearest (int64, N)."""
    return distances(images, means, metric, chunk).argmin(1)


@dataclass
class BaselineResult:
    """A nearest-mean run: its accuracy, its confusion matrix and every prediction."""

    metric: str
    accuracy: float
    confusion: np.ndarray  # int64 10x10, rows = true digit, columns = predicted digit
    predictions: torch.Tensor  # int64, one per test image


def nearest_mean_baseline(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    metric: str = "l2",
) -> BaselineResult:
    """Fit the ten mean images on the training set and score nearest-mean on the test set."""
    check_metric(metric)
    check_images(test_images, "test_images")
    check_labels(test_labels, len(test_images), "test_labels")
    if len(test_images) == 0:
        raise ValueError("test_images is empty: there is nothing to score.")
    means = mean_images(train_images, train_labels)
    predictions = nearest_mean_predict(test_images, means, metric)
    truth = test_labels.to(torch.int64)
    confusion = confusion_counts(truth.numpy(), predictions.numpy(), NUM_CLASSES)
    accuracy = float((predictions == truth).to(torch.float64).mean())
    return BaselineResult(metric, accuracy, confusion, predictions)


def pair_similarity(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    a: int = 3,
    b: int = 7,
    metric: str = "l1",
) -> float:
    """The seed's two-digit pixel-similarity accuracy (3 vs 7 by default).

    Among the test images of digits `a` and `b`, the fraction strictly closer to their own
    digit's training mean than to the other's (pooled over both digits, not the mean of the
    two per-digit accuracies).
    """
    check_digit(a, "a")
    check_digit(b, "b")
    if int(a) == int(b):
        raise ValueError(f"a and b must be different digits, got {a} twice.")
    check_images(train_images, "train_images")
    check_labels(train_labels, len(train_images), "train_labels")
    check_images(test_images, "test_images")
    check_labels(test_labels, len(test_images), "test_labels")
    pair = (a, b)
    means = []
    for digit in pair:
        picked = train_labels == digit
        if not bool(picked.any()):
            raise ValueError(f"no training images of digit {digit}.")
        means.append(as_unit_float(train_images[picked]).mean(0))
    keep = (test_labels == a) | (test_labels == b)
    if not bool(keep.any()):
        raise ValueError(f"no test images of digits {a} or {b}.")
    dist = distances(test_images[keep], torch.stack(means), metric)
    is_a = test_labels[keep] == a
    own = torch.where(is_a, dist[:, 0], dist[:, 1])
    other = torch.where(is_a, dist[:, 1], dist[:, 0])
    return float((own < other).to(torch.float64).mean())


def difference_image(means: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """means[a] - means[b]: positive where digit a has ink that b lacks, negative the reverse."""
    check_images(means, "means")
    if len(means) != NUM_CLASSES:
        raise ValueError(f"means must hold {NUM_CLASSES} images, got {len(means)}.")
    check_digit(a, "a")
    check_digit(b, "b")
    return means[int(a)] - means[int(b)]
