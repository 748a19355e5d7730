"""Browsing MNIST: choosing, shuffling and paging images, and the summaries the data pages show.

Pure functions over tensors and arrays (no Streamlit), so the Start-here, Dataset and Mean-images
pages stay layout only and every number they show can be tested on tiny synthetic data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mnist_core.teach import pictures
from mnist_core.engine.data import Mnist, class_counts

SPLITS = ("train", "test")
NUM_CLASSES = 10
# Images per chunk when summing pixels: bounds the int64 temporaries to about 50 MB.
PIXEL_CHUNK = 8192


def split_arrays(data: Mnist, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) of the "train" or "test" split."""
    if split == "train":
        return data.train_images, data.train_labels
    if split == "test":
        return data.test_images, data.test_labels
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")


def check_digits(digits: Sequence[int]) -> list[int]:
    """The chosen digits as plain ints, rejecting anything that is not 0..9."""
    out = []
    for digit in digits:
        if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)):
            raise ValueError(f"digits must be integers 0..9, got {digit!r}.")
        if not 0 <= int(digit) < NUM_CLASSES:
            raise ValueError(f"digits must be 0..9, got {int(digit)}.")
        out.append(int(digit))
    return out


def select_indices(
    labels: torch.Tensor | np.ndarray, digits: Sequence[int], seed: int = 0, shuffle: bool = False
) -> np.ndarray:
    """Indices of the images whose label is one of `digits`, in dataset order or shuffled.

    The shuffle is a permutation drawn from `seed`, so the same seed always gives the same
    order: a reader can share "seed 7, page 3" and both see the same images. No digits, no images.
    """
    wanted = check_digits(digits)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}.")
    indices = np.flatnonzero(np.isin(labels, wanted))
    if shuffle:
        if seed < 0:
            raise ValueError(f"seed must be 0 or more, got {seed}.")
        indices = np.random.default_rng(seed).permutation(indices)
    return indices


def page_count(total: int, per_page: int) -> int:
    """How many pages `total` items fill; at least 1, so an empty selection still has page 1."""
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}.")
    if total < 0:
        raise ValueError(f"total must be 0 or more, got {total}.")
    return max(1, math.ceil(total / per_page))


def page_of(indices: np.ndarray, page: int, per_page: int) -> np.ndarray:
    """The slice of `indices` shown on page `page` (counted from 1, as the page shows it)."""
    pages = page_count(len(indices), per_page)
    if not 1 <= page <= pages:
        raise ValueError(f"page must be between 1 and {pages}, got {page}.")
    start = (page - 1) * per_page
    return indices[start : start + per_page]


def upscale(image: torch.Tensor | np.ndarray, factor: int) -> np.ndarray:
    """A uint8 image enlarged by repeating each pixel `factor` times in both directions.

    Browsers blur small images when they scale them up; pre-enlarged pixels stay sharp squares.
    """
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}.")
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"image must be H x W, got shape {array.shape}.")
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1).astype(np.uint8)


def pixel_mean_std_maps(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation (H x W, float64, pixels scaled to [0, 1]).

    Summed as int64 in chunks, so the result is exact for uint8 input and the full training set
    never becomes a 376 MB float64 copy. The std is the population std (divides by N).
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}.")
    if images.ndim != 3:
        raise ValueError(f"images must be N x H x W, got shape {tuple(images.shape)}.")
    n = len(images)
    if n == 0:
        raise ValueError("images is empty: there are no pixels to average.")
    sums = torch.zeros(images.shape[1:], dtype=torch.int64)
    squares = torch.zeros(images.shape[1:], dtype=torch.int64)
    for start in range(0, n, PIXEL_CHUNK):
        block = images[start : start + PIXEL_CHUNK].to(torch.int64)
        sums += block.sum(0)
        squares += block.pow_(2).sum(0)
    mean = sums.numpy().astype(np.float64) / n
    variance = np.clip(squares.numpy().astype(np.float64) / n - mean**2, 0.0, None)
    return mean / 255.0, np.sqrt(variance) / 255.0


def class_count_table(train_labels: torch.Tensor, test_labels: torch.Tensor) -> pd.DataFrame:
    """One row per (split, digit): the count and its share of the split, for a grouped bar chart."""
    rows = []
    for split, labels in (("train", train_labels), ("test", test_labels)):
        counts = class_counts(labels)
        total = sum(counts)
        for digit, count in enumerate(counts):
            rows.append(
                {
                    "split": split,
                    "digit": str(digit),
                    "count": count,
                    "share": count / total if total else 0.0,
                }
            )
    return pd.DataFrame(rows, columns=["split", "digit", "count", "share"])


SPLIT_COLOURS = {"train": "#3b5bdb", "test": "#f08c00"}


def class_share_chart(train_labels: torch.Tensor, test_labels: torch.Tensor) -> str:
    """Each digit's share of each split as grouped bars (SVG): shares, not counts, so the
    60,000 training and 10,000 test images compare on one axis."""
    counts = class_count_table(train_labels, test_labels)
    series = [(f"{split} ({int(rows['count'].sum()):,} images)", list(rows["share"]), SPLIT_COLOURS[split])
              for split, rows in counts.groupby("split", sort=False)]
    return pictures.grouped_bars([str(d) for d in range(10)], series, label=lambda share: f"{share:.1%}",
                                 axis="share of its split", axis_label=lambda v: f"{v:.0%}")


@dataclass(frozen=True)
class DatasetSummary:
    """The handful of facts the Start-here page states, all read from the data itself."""

    train_count: int
    test_count: int
    height: int
    width: int
    classes: int
    most_common: tuple[int, int]  # (digit, count) in the training set
    least_common: tuple[int, int]


def summarise(data: Mnist) -> DatasetSummary:
    """Counts, image size and the most and least frequent training digit."""
    counts = class_counts(data.train_labels)
    present = [digit for digit, count in enumerate(counts) if count]
    if not present:
        raise ValueError("the training set is empty.")
    most = max(present, key=lambda d: counts[d])
    least = min(present, key=lambda d: counts[d])
    return DatasetSummary(
        train_count=len(data.train_labels),
        test_count=len(data.test_labels),
        height=int(data.train_images.shape[1]),
        width=int(data.train_images.shape[2]),
        classes=len(present),
        most_common=(most, counts[most]),
        least_common=(least, counts[least]),
    )


def top_confusions(confusion: np.ndarray, k: int = 3) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal cells as (true digit, predicted digit, count), largest first.

    Ties keep matrix order (row, then column), so the list is stable from run to run.
    """
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {matrix.shape}.")
    if k < 0:
        raise ValueError(f"k must be 0 or more, got {k}.")
    off = matrix.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    size = matrix.shape[1]
    return [(int(i // size), int(i % size), int(flat[i])) for i in order if flat[i] > 0]
