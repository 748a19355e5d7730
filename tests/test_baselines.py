"""Nearest-mean baselines: exact answers on data built to have them, plus the real numbers."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from mnist_core.engine.baselines import (
    BaselineResult,
    difference_image,
    distances,
    mean_images,
    nearest_mean_baseline,
    nearest_mean_predict,
    pair_similarity,
)


def templates() -> torch.Tensor:
    """Ten clearly different uint8 28x28 images: digit d lights up rows 2d..2d+4."""
    out = torch.zeros(10, 28, 28, dtype=torch.uint8)
    for digit in range(10):
        out[digit, 2 * digit : 2 * digit + 5, 4 + digit : 20 + digit] = 255
    return out


def noisy_copies(per_class: int, seed: int, noise: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` noisy copies of each template, shuffled, with their labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(per_class)
    base = templates()[labels].to(torch.int16)
    jitter = torch.randint(-noise, noise + 1, base.shape, generator=gen, dtype=torch.int16)
    images = (base + jitter).clamp(0, 255).to(torch.uint8)
    order = torch.randperm(len(labels), generator=gen)
    return images[order], labels[order]


def test_mean_images_averages_each_class_exactly() -> None:
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    images[0], images[1] = 255, 0  # digit 0: mean 0.5 everywhere
    images[2, 0, 0] = 51  # digit 1: 0.2 in one corner
    images[3] = 102  # digit 2: 0.4 everywhere
    labels = torch.tensor([0, 0, 1, 2])
    with pytest.raises(ValueError, match=r"no images of digit\(s\) \[3, 4"):
        mean_images(images, labels)
    full_images = torch.cat([images, templates()[3:]])
    full_labels = torch.cat([labels, torch.arange(3, 10)])
    means = mean_images(full_images, full_labels, chunk=3)
    assert means.shape == (10, 28, 28) and means.dtype == torch.float32
    assert torch.allclose(means[0], torch.full((28, 28), 0.5))
    assert means[1, 0, 0] == pytest.approx(0.2) and means[1].sum() == pytest.approx(0.2)
    assert torch.allclose(means[2], torch.full((28, 28), 0.4))
    assert torch.equal(means[3:], templates()[3:].float() / 255)
    assert float(means.min()) >= 0 and float(means.max()) <= 1


@pytest.mark.parametrize("metric", ["l1", "l2"])
def test_templates_are_classified_perfectly(metric: str) -> None:
    means = templates().float() / 255
    assert torch.equal(nearest_mean_predict(templates(), means, metric), torch.arange(10))
    test_images, test_labels = noisy_copies(20, seed=1)
    train_images, train_labels = noisy_copies(30, seed=2)
    result = nearest_mean_baseline(train_images, train_labels, test_images, test_labels, metric)
    assert isinstance(result, BaselineResult)
    assert result.metric == metric and result.accuracy == 1.0
    assert result.confusion.dtype == np.int64 and result.confusion.shape == (10, 10)
    assert np.array_equal(result.confusion, np.diag(np.full(10, 20)))
    assert torch.equal(result.predictions, test_labels)


def test_confusion_rows_are_truth_and_columns_predictions() -> None:
    train_images, train_labels = templates(), torch.arange(10)
    test_images = templates()[[3, 3, 5]]
    test_labels = torch.tensor([3, 8, 5])  # the second image is "really" an 8 drawn like a 3
    result = nearest_mean_baseline(train_images, train_labels, test_images, test_labels, "l2")
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.confusion.sum() == 3
    assert result.confusion[8, 3] == 1 and result.confusion[3, 8] == 0
    assert result.confusion[3, 3] == 1 and result.confusion[5, 5] == 1


def test_confusion_sums_to_n_on_a_mixed_set() -> None:
    train_images, train_labels = noisy_copies(10, seed=3, noise=120)
    test_images, test_labels = noisy_copies(7, seed=4, noise=250)
    result = nearest_mean_baseline(train_images, train_labels, test_images, test_labels, "l1")
    assert result.confusion.sum() == 70
    assert np.array_equal(result.confusion.sum(axis=1), np.full(10, 7))
    hits = int(np.trace(result.confusion))
    assert result.accuracy == pytest.approx(hits / 70)


@pytest.mark.parametrize("metric", ["l1", "l2"])
def test_chunking_does_not_change_results(metric: str) -> None:
    images, labels = noisy_copies(13, seed=5, noise=200)
    means = mean_images(images, labels)
    assert torch.equal(mean_images(images, labels, chunk=7), means)
    whole = distances(images, means, metric, chunk=len(images))
    for chunk in (1, 7, 64):
        assert torch.equal(distances(images, means, metric, chunk=chunk), whole)
        assert torch.equal(
            nearest_mean_predict(images, means, metric, chunk=chunk), whole.argmin(1)
        )


def test_distances_match_their_definitions() -> None:
    images, _ = noisy_copies(2, seed=6)
    means = templates().float() / 255
    x = images.float() / 255
    expected_l1 = (x[:, None] - means[None]).abs().sum((2, 3))
    expected_l2 = (x[:, None] - means[None]).pow(2).sum((2, 3)).sqrt()
    assert torch.allclose(distances(images, means, "l1"), expected_l1, atol=1e-4)
    assert torch.allclose(distances(images, means, "l2"), expected_l2, atol=1e-4)


def test_pair_similarity_counts_images_closer_to_their_own_mean() -> None:
    train_images, train_labels = templates()[[3, 7]], torch.tensor([3, 7])
    t3, t7 = templates()[3], templates()[7]
    # Two 3s and a 7 look like themselves; one 7 is drawn exactly like a 3.
    test_images = torch.stack([t3, t3, t7, t3, templates()[1]])
    test_labels = torch.tensor([3, 3, 7, 7, 1])  # the 1 is ignored
    score = pair_similarity(train_images, train_labels, test_images, test_labels)
    assert score == pytest.approx(3 / 4)
    assert pair_similarity(
        train_images, train_labels, test_images[:3], test_labels[:3], metric="l2"
    ) == 1.0


def test_difference_image_is_signed() -> None:
    means = templates().float() / 255
    diff = difference_image(means, 3, 7)
    assert diff.shape == (28, 28)
    assert torch.equal(diff, means[3] - means[7])
    assert float(diff.max()) == 1.0 and float(diff.min()) == -1.0


def test_bad_arguments_are_clear_errors() -> None:
    images, labels = templates(), torch.arange(10)
    means = mean_images(images, labels)
    with pytest.raises(ValueError, match="metric"):
        nearest_mean_predict(images, means, "cosine")
    with pytest.raises(ValueError, match="N x H x W"):
        nearest_mean_predict(images.reshape(10, -1), means)
    with pytest.raises(ValueError, match="one label per image"):
        mean_images(images, labels[:5])
    with pytest.raises(ValueError, match="digits 0..9"):
        mean_images(images, labels + 1)
    with pytest.raises(ValueError, match="different digits"):
        pair_similarity(images, labels, images, labels, a=4, b=4)
    with pytest.raises(ValueError, match="digit 0..9"):
        difference_image(means, 3, 10)
    with pytest.raises(ValueError, match="no test images"):
        pair_similarity(images, labels, images[:2], labels[:2], a=3, b=7)
    with pytest.raises(ValueError, match="empty"):
        nearest_mean_baseline(images, labels, images[:0], labels[:0])


@pytest.mark.skipif(not os.environ.get("MNIST_DATA_DIR"), reason="MNIST_DATA_DIR is not set")
def test_real_mnist_baselines() -> None:
    from mnist_core.engine.data import load_mnist

    data = load_mnist(allow_download=False)
    args = (data.train_images, data.train_labels, data.test_images, data.test_labels)
    start = time.perf_counter()
    l2 = nearest_mean_baseline(*args, metric="l2")
    l1 = nearest_mean_baseline(*args, metric="l1")
    three_seven = pair_similarity(*args, a=3, b=7, metric="l1")
    elapsed = time.perf_counter() - start
    assert l2.accuracy == pytest.approx(0.8203, abs=0.01)
    assert l1.accuracy == pytest.approx(0.6685, abs=0.01)
    assert three_seven == pytest.approx(0.9514, abs=0.01)
    assert l2.confusion.sum() == l1.confusion.sum() == 10000
    # Speed is the benchmark's business (README: ~0.1 s), not a timed assertion on a busy machine.
    print(f"three baselines on real MNIST: {elapsed:.2f} s")
