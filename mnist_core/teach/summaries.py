"""Figures about the data set that every visitor sees: computed once per server process.

A class opening the Dataset page at the same moment would otherwise compute the same per-pixel
maps eight times over on two cores (Streamlit's caches do not make concurrent sessions wait for
one computation). Here each value is computed once, by whichever caller comes first, while the
others wait for it; `warm` computes them all in the background when the server starts.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from mnist_core.engine.baselines import mean_images, nearest_mean_baseline, pair_similarity
from mnist_core.engine.data import Mnist, pixel_stats
from mnist_core.teach.explore import pixel_mean_std_maps, split_arrays

T = TypeVar("T")
METRICS = ("l2", "l1")


def once_per_data(function: Callable[..., T]) -> Callable[..., T]:
    """Memoise `function(data, *args)` per data source and arguments; concurrent callers of one
    key wait for a single computation instead of repeating it."""
    results: dict[tuple, T] = {}
    locks: dict[tuple, threading.Lock] = {}
    guard = threading.Lock()

    @functools.wraps(function)
    def wrapper(data: Mnist, *args):
        key = (data.source, len(data.train_labels), len(data.test_labels), *args)
        with guard:
            lock = locks.setdefault(key, threading.Lock())
        with lock:
            if key not in results:
                results[key] = function(data, *args)
            return results[key]

    wrapper.cache_clear = results.clear  # type: ignore[attr-defined]
    return wrapper


@once_per_data
def split_stats(data: Mnist, split: str) -> tuple[float, float]:
    """Mean and std of all pixels of a split, scaled to [0, 1]."""
    return pixel_stats(split_arrays(data, split)[0])


@once_per_data
def split_maps(data: Mnist, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std maps of a split."""
    return pixel_mean_std_maps(split_arrays(data, split)[0])


@once_per_data
def digit_means(data: Mnist) -> np.ndarray:
    """The ten mean images, 10x28x28 in [0, 1]."""
    return mean_images(data.train_images, data.train_labels).numpy()


@once_per_data
def baseline(data: Mnist, metric: str) -> tuple[float, np.ndarray]:
    """Test accuracy and confusion matrix of nearest-mean classification with `metric`."""
    result = nearest_mean_baseline(data.train_images, data.train_labels, data.test_images, data.test_labels, metric)
    return result.accuracy, result.confusion


@once_per_data
def pair_accuracy(data: Mnist, a: int, b: int, metric: str) -> float:
    """Accuracy of telling digit a from digit b by similarity to their mean images."""
    return pair_similarity(data.train_images, data.train_labels, data.test_images, data.test_labels, a, b, metric)


def warm(data: Mnist) -> threading.Thread:
    """Compute everything the data pages show, in a background thread, lowest cost first."""

    def work() -> None:
        digit_means(data)
        for split in ("train", "test"):
            split_stats(data, split)
        for metric in METRICS:
            baseline(data, metric)
        for split in ("train", "test"):
            split_maps(data, split)
        pair_accuracy(data, 3, 7, "l2")

    thread = threading.Thread(target=work, name="mnist-warm-summaries", daemon=True)
    thread.start()
    return thread
