"""The Dataset page's logic on tiny synthetic tensors, where every answer is known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_core.engine.data import Mnist
from mnist_core.teach.explore import (
    class_count_table,
    class_share_chart,
    page_count,
    page_of,
    pixel_mean_std_maps,
    select_indices,
    split_arrays,
    summarise,
    top_confusions,
    upscale,
)

LABELS = torch.tensor([3, 1, 3, 7, 0, 3, 1, 9])


def tiny_mnist() -> Mnist:
    """Six training images (two 1s, three 4s, one 0) and two test images, all 28x28."""
    train_labels = torch.tensor([1, 4, 4, 0, 1, 4])
    train_images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1).expand(6, 28, 28).clone()
    return Mnist(
        train_images=train_images,
        train_labels=train_labels,
        test_images=torch.zeros(2, 28, 28, dtype=torch.uint8),
        test_labels=torch.tensor([4, 1]),
        source="synthetic",
        folder=Path("."),
    )


def test_select_indices_keeps_only_chosen_digits_in_dataset_order() -> None:
    assert select_indices(LABELS, [3]).tolist() == [0, 2, 5]
    assert select_indices(LABELS, [1, 9]).tolist() == [1, 6, 7]
    assert select_indices(LABELS, list(range(10))).tolist() == list(range(8))
    assert select_indices(LABELS, []).tolist() == []
    assert select_indices(LABELS, [5]).tolist() == []
    assert select_indices(LABELS.numpy(), [np.int64(7)]).tolist() == [3]


def test_shuffle_is_a_permutation_fixed_by_the_seed() -> None:
    labels = torch.arange(200) % 10
    plain = select_indices(labels, [2, 5])
    first = select_indices(labels, [2, 5], seed=7, shuffle=True)
    again = select_indices(labels, [2, 5], seed=7, shuffle=True)
    other = select_indices(labels, [2, 5], seed=8, shuffle=True)
    assert sorted(first.tolist()) == plain.tolist()
    assert first.tolist() == again.tolist()
    assert first.tolist() != plain.tolist()
    assert first.tolist() != other.tolist()
    assert set(labels[first].tolist()) == {2, 5}
    # The seed only matters when shuffling.
    assert select_indices(labels, [2, 5], seed=99).tolist() == plain.tolist()


@pytest.mark.parametrize(
    ("digits", "message"),
    [
        ([10], "0..9"), ([-1], "0..9"),
        ([2.0], "integers"), (["3"], "integers"), ([True], "integers"),
    ],
)
def test_select_indices_rejects_non_digits(digits: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_indices(LABELS, digits)


def test_select_indices_rejects_bad_labels_and_seed() -> None:
    with pytest.raises(ValueError, match="1-D"):
        select_indices(LABELS.view(2, 4), [3])
    with pytest.raises(ValueError, match="seed"):
        select_indices(LABELS, [3], seed=-1, shuffle=True)


def test_paging_covers_every_index_once() -> None:
    indices = np.arange(100, 110)
    assert page_count(10, 4) == 3
    assert page_count(8, 4) == 2
    assert page_count(0, 4) == 1
    assert page_of(indices, 1, 4).tolist() == [100, 101, 102, 103]
    assert page_of(indices, 3, 4).tolist() == [108, 109]
    pages = [page_of(indices, p, 4).tolist() for p in range(1, page_count(10, 4) + 1)]
    assert sum(pages, []) == indices.tolist()
    assert page_of(np.array([], dtype=np.int64), 1, 4).tolist() == []


def test_paging_rejects_pages_out_of_range() -> None:
    indices = np.arange(10)
    for page in (0, 4):
        with pytest.raises(ValueError, match="between 1 and 3"):
            page_of(indices, page, 4)
    with pytest.raises(ValueError, match="per_page"):
        page_count(10, 0)


def test_upscale_repeats_pixels_into_sharp_blocks() -> None:
    image = torch.tensor([[0, 255], [10, 20]], dtype=torch.uint8)
    big = upscale(image, 3)
    assert big.shape == (6, 6) and big.dtype == np.uint8
    assert (big[:3, :3] == 0).all() and (big[:3, 3:] == 255).all()
    assert (big[3:, :3] == 10).all() and (big[3:, 3:] == 20).all()
    assert np.array_equal(upscale(image, 1), image.numpy())
    with pytest.raises(ValueError, match="factor"):
        upscale(image, 0)
    with pytest.raises(ValueError, match="H x W"):
        upscale(image.view(1, 2, 2), 2)


def test_pixel_maps_are_exact_per_pixel_mean_and_std() -> None:
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.tensor([0, 255, 0, 255], dtype=torch.uint8)  # mean .5, std .5
    images[:, 5, 9] = 51  # constant 0.2: std 0
    images[0, 27, 27] = 255  # one of four lit: mean .25, std sqrt(.25*.75)
    mean, std = pixel_mean_std_maps(images)
    assert mean.shape == std.shape == (28, 28)
    assert mean[0, 0] == pytest.approx(0.5) and std[0, 0] == pytest.approx(0.5)
    assert mean[5, 9] == pytest.approx(0.2) and std[5, 9] == pytest.approx(0.0, abs=1e-12)
    assert mean[27, 27] == pytest.approx(0.25)
    assert std[27, 27] == pytest.approx(np.sqrt(0.25 * 0.75))
    assert mean.sum() == pytest.approx(0.5 + 0.2 + 0.25)


def test_pixel_maps_match_torch_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import mnist_core.teach.explore as explore

    monkeypatch.setattr(explore, "PIXEL_CHUNK", 3)  # 10 images: chunks of 3, 3, 3, 1
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 28, 28), generator=gen, dtype=torch.uint8)
    mean, std = pixel_mean_std_maps(images)
    scaled = images.double() / 255
    assert np.allclose(mean, scaled.mean(0).numpy())
    assert np.allclose(std, scaled.std(0, correction=0).numpy())


def test_pixel_maps_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        pixel_mean_std_maps(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="N x H x W"):
        pixel_mean_std_maps(torch.zeros(28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        pixel_mean_std_maps(torch.zeros(0, 28, 28, dtype=torch.uint8))


def test_class_count_table_counts_every_digit_of_both_splits() -> None:
    table = class_count_table(torch.tensor([0, 0, 1, 9]), torch.tensor([5]))
    assert list(table.columns) == ["split", "digit", "count", "share"]
    assert len(table) == 20
    train = table[table.split == "train"].set_index("digit")
    test = table[table.split == "test"].set_index("digit")
    assert train.loc["0", "count"] == 2 and train.loc["9", "count"] == 1
    assert train.loc["5", "count"] == 0
    assert train["share"].sum() == pytest.approx(1.0)
    assert train.loc["0", "share"] == pytest.approx(0.5)
    assert test.loc["5", "count"] == 1 and test["count"].sum() == 1


def test_class_share_chart_draws_each_split_share_with_its_label() -> None:
    svg = class_share_chart(torch.tensor([0, 0, 1, 9]), torch.tensor([5]))
    assert "train (4 images)" in svg and "test (1 images)" in svg
    assert ">50.0%<" in svg and ">25.0%<" in svg and ">100.0%<" in svg  # digit 0, digits 1 and 9, test 5
    assert svg.count('fill="#3b5bdb"') == 11 and svg.count('fill="#f08c00"') == 11  # 10 bars + legend each


def test_split_arrays_and_summary() -> None:
    data = tiny_mnist()
    images, labels = split_arrays(data, "test")
    assert images is data.test_images and labels is data.test_labels
    assert split_arrays(data, "train")[1] is data.train_labels
    with pytest.raises(ValueError, match="split"):
        split_arrays(data, "validation")
    summary = summarise(data)
    assert (summary.train_count, summary.test_count) == (6, 2)
    assert (summary.height, summary.width) == (28, 28)
    assert summary.classes == 3
    assert summary.most_common == (4, 3)
    assert summary.least_common == (0, 1)


def test_top_confusions_ignores_the_diagonal_and_orders_by_count() -> None:
    confusion = np.array([[50, 2, 7], [9, 40, 0], [2, 0, 30]])
    assert top_confusions(confusion, 2) == [(1, 0, 9), (0, 2, 7)]
    # Ties keep matrix order; empty cells are never listed.
    assert top_confusions(confusion, 10) == [(1, 0, 9), (0, 2, 7), (0, 1, 2), (2, 0, 2)]
    assert top_confusions(np.eye(3, dtype=int) * 5) == []
    with pytest.raises(ValueError, match="square"):
        top_confusions(np.zeros((2, 3)))
