"""The server-drawn SVG charts: valid XML, right colours and numbers, every label escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from mnist_core.teach import pictures

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert(1)</script>"&'


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def test_paint_maps_the_ends_and_the_middle_of_a_scale() -> None:
    colours = pictures.paint(np.array([-5.0, 0.0, 127.5, 255.0, 900.0]), "gray", 0, 255)
    assert colours.tolist() == [[0, 0, 0], [0, 0, 0], [128, 128, 128], [255, 255, 255], [255, 255, 255]]
    viridis = pictures.paint(np.array([[0.0, 1.0]]), "viridis", 0, 1)
    assert viridis.shape == (1, 2, 3) and viridis.dtype == np.uint8
    assert pictures.hex_colour(viridis[0, 0]) == "#440154" and pictures.hex_colour(viridis[0, 1]) == "#fde725"
    assert pictures.paint(np.array([0.0]), "blue_red", -1, 1).tolist() == [[247, 247, 247]]  # zero is white
    assert pictures.paint(np.array([3.0]), "gray", 3, 3).tolist() == [[0, 0, 0]]  # a flat map does not divide by 0


def test_text_colour_reads_on_dark_and_light_cells() -> None:
    assert pictures.ink_for((0, 0, 0)) == "#ffffff"
    assert pictures.ink_for((255, 255, 255)) == pictures.TEXT


def test_heatmap_has_one_cell_per_value_and_a_labelled_colour_bar() -> None:
    values = np.arange(28 * 28, dtype=float).reshape(28, 28) / 1000
    root = parse(pictures.heatmap(values, "Mean of each pixel", "viridis", 0.0, None, "mean"))
    cells = [r for r in root.iter(f"{SVG}rect") if r.get("width") == "10" and r.get("height") == "10"]
    assert len(cells) == 784
    assert cells[0].get("fill") == "#440154" and cells[-1].get("fill") == "#fde725"  # low and high ends
    labels = texts(root)
    assert "Mean of each pixel" in labels and "mean" in labels
    assert {"0", "0.783", "0.392"} <= set(labels)  # the colour bar: low, high and middle
    assert {"7", "14", "21", "27"} <= set(labels)  # row and column numbers


@pytest.mark.parametrize("top, step", [(0.113, 0.05), (6742, 2000), (1.0, 0.2), (0.0, 1.0), (47, 10)])
def test_nice_step_is_one_two_or_five_times_a_power_of_ten(top: float, step: float) -> None:
    assert pictures.nice_step(top) == pytest.approx(step)


def test_grouped_bars_draw_each_value_with_its_label() -> None:
    series = [("train", [0.1, 0.3], "#3b5bdb"), ("test", [0.2, 0.4], "#f08c00")]
    root = parse(pictures.grouped_bars(["a", "b"], series, label=lambda v: f"{v:.0%}", axis="share"))
    bars: dict[str, list[float]] = {"#3b5bdb": [], "#f08c00": []}
    for r in root.iter(f"{SVG}rect"):
        if r.get("fill") in bars:
            bars[r.get("fill")].append(float(r.get("height")))
    assert len(bars["#3b5bdb"]) == len(bars["#f08c00"]) == 3  # two bars and a legend swatch each
    assert bars["#3b5bdb"][1] == pytest.approx(3 * bars["#3b5bdb"][0])  # heights in proportion
    assert {"10%", "30%", "20%", "40%", "a", "b", "train", "test", "share"} <= set(texts(root))


def test_every_label_is_escaped() -> None:
    svgs = [
        pictures.heatmap(np.zeros((3, 3)), HOSTILE, legend=HOSTILE),
        pictures.grouped_bars([HOSTILE], [(HOSTILE, [1.0], "#000000")], label=lambda _: HOSTILE, axis=HOSTILE),
        pictures.number_grid(np.array([[HOSTILE]]), np.zeros((1, 1, 3), np.uint8), HOSTILE, HOSTILE),
    ]
    for svg in svgs:
        assert "<script" not in svg
        root = parse(svg)
        assert HOSTILE in texts(root)  # shown as text, exactly as given
        assert not list(root.iter(f"{SVG}script"))


def test_pixel_values_write_all_784_values_on_their_own_grey() -> None:
    image = (np.arange(784) % 256).reshape(28, 28).astype(np.uint8)
    root = parse(pictures.pixel_values(image))
    written = [int(t) for t in texts(root) if re.fullmatch(r"\d+", t)]
    assert written[-784:] == image.flatten().tolist()
    cells = [r for r in root.iter(f"{SVG}rect") if r.get("width") == "26"]
    assert len(cells) == 784 and cells[255].get("fill") == "#ffffff" and cells[0].get("fill") == "#000000"


def test_confusion_matrix_shades_counts_on_a_log_scale() -> None:
    confusion = np.diag([1000] * 10) + np.eye(10, k=1, dtype=int) * 5
    root = parse(pictures.confusion_matrix(confusion))
    assert texts(root)[-100:] == [f"{v:,}" for v in confusion.flatten()]
    assert {"true digit", "predicted digit"} <= set(texts(root))
    shares = pictures.log_shares(confusion)
    assert shares.max() == 1.0 and 0.2 < shares[0, 1] < 0.3  # log(6)/log(1001): five mistakes still show
