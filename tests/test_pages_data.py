"""The Start-here, Dataset and Mean-images pages, driven through the real app with AppTest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import svg_from_url

APP = Path(__file__).resolve().parent.parent / "app.py"
TIMEOUT = 120


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return values[0]


def percent(text: str) -> float:
    match = re.fullmatch(r"(\d+\.\d+)%", text)
    assert match, f"{text!r} is not a percentage"
    return float(match.group(1)) / 100


def thumbnails(at: AppTest) -> list[tuple[int, int]]:
    """(label, index) of every image in the browsing grid, from captions like "3 · #1234"."""
    grid = at.image[0].captions
    return [(int(label), int(index)) for label, index in (c.split(" · #") for c in grid)]


def svgs(at: AppTest) -> list[str]:
    """Every SVG picture the page shows."""
    return [svg for image in at.image for svg in map(svg_from_url, image.value) if svg]


def picture(at: AppTest, caption: str) -> str:
    """The SVG of the picture whose caption starts with `caption`."""
    for image in at.image:
        for url, text in zip(image.value, image.captions):
            if text.startswith(caption):
                svg = svg_from_url(url)
                assert svg, url[:40]
                return svg
    raise AssertionError(f"no picture captioned {caption!r}")


def numbers_in(svg: str) -> list[int]:
    """The whole numbers written in an SVG's text elements, in document order."""
    return [int(t.replace(",", "")) for t in re.findall(r">([\d,]+)</text>", svg)]


def page_input(at: AppTest):
    return next(n for n in at.number_input if n.label.startswith("Page (of"))


def test_home_page_links_the_learning_path_and_counts_the_data(mnist) -> None:
    at = open_page("pages/home.py")
    assert at.title[0].value
    targets = [link.proto.page for link in at.page_link]
    assert len(targets) == 7 and len(set(targets)) == 7
    assert metric(at, "Training images") == f"{len(mnist.train_labels):,}"
    assert metric(at, "Test images") == f"{len(mnist.test_labels):,}"
    assert metric(at, "Classes") == "10 digits"


def test_dataset_page_shows_the_normalisation_constants(mnist) -> None:
    at = open_page("pages/dataset.py")
    assert metric(at, "Training mean") == "0.1307"
    assert metric(at, "Training std") == "0.3081"
    text = " ".join(m.value for m in at.markdown)
    assert "0.1307" in text and "0.3081" in text
    assert not at.error and not at.warning
    shown = thumbnails(at)
    assert len(shown) == 48
    assert [index for _, index in shown] == list(range(48))
    assert all(label == int(mnist.train_labels[index]) for label, index in shown)


def test_dataset_digit_filter_shuffle_and_paging(mnist) -> None:
    at = open_page("pages/dataset.py")
    at.multiselect(key="dataset_digits").set_value([3, 8]).run()
    assert not at.exception
    first = thumbnails(at)
    assert {label for label, _ in first} == {3, 8}
    count = int(((mnist.train_labels == 3) | (mnist.train_labels == 8)).sum())
    assert page_input(at).label == f"Page (of {-(-count // 48):,})"

    page_input(at).set_value(2).run()
    second = thumbnails(at)
    assert not at.exception and {label for label, _ in second} == {3, 8}
    assert min(i for _, i in second) > max(i for _, i in first)

    at.toggle(key="dataset_shuffle").set_value(True).run()
    shuffled = [i for _, i in thumbnails(at)]
    assert shuffled != sorted(shuffled)  # a new filter starts again at page 1, shuffled
    at.number_input(key="dataset_seed").set_value(1).run()
    reseeded = [i for _, i in thumbnails(at)]
    assert not at.exception and reseeded != shuffled
    assert all(int(mnist.train_labels[i]) in (3, 8) for i in reseeded)

    at.segmented_control(key="dataset_split").set_value("test").run()
    assert not at.exception
    assert all(label == int(mnist.test_labels[index]) for label, index in thumbnails(at))


def test_dataset_close_up_names_the_chosen_image(mnist) -> None:
    at = open_page("pages/dataset.py")
    at.number_input(key="dataset_index_train").set_value(7).run()
    assert not at.exception
    assert any(
        f"Image #7 is labelled **{int(mnist.train_labels[7])}**" in m.value for m in at.markdown
    )
    close_up = picture(at, "The 784 values of image #7")  # the values, as a shaded 28 x 28 grid
    assert numbers_in(close_up)[-784:] == mnist.train_images[7].flatten().tolist()


def test_dataset_pictures_show_the_class_shares_and_pixel_maps(mnist) -> None:
    at = open_page("pages/dataset.py")
    bars = picture(at, "Each bar: the share of a split's images")
    for labels in (mnist.train_labels, mnist.test_labels):
        for digit in range(10):
            assert f">{float((labels == digit).float().mean()):.1%}<" in bars
    assert "train (60,000 images)" in bars and "test (10,000 images)" in bars
    maps = [svg for svg in svgs(at) if "Mean of each pixel" in svg or "Standard deviation of each pixel" in svg]
    assert len(maps) == 2 and all(svg.count("<rect") >= 784 for svg in maps)


def test_mean_images_page_shows_the_baseline_accuracy(mnist) -> None:
    at = open_page("pages/mean_images.py")
    assert percent(metric(at, "L2 (Euclidean) accuracy")) == pytest.approx(0.82, abs=0.005)
    assert percent(metric(at, "L1 (sum of absolute differences) accuracy")) < 0.82
    assert 0.9 < percent(metric(at, "3 vs 7 accuracy, L1 (sum of absolute differences)")) < 1
    assert not at.warning

    at.selectbox(key="mean_digit_a").set_value(4)
    at.selectbox(key="mean_digit_b").set_value(9).run()
    assert not at.exception
    assert 0.5 < percent(metric(at, "4 vs 9 accuracy, L2 (Euclidean)")) < 1

    at.selectbox(key="mean_digit_b").set_value(4).run()
    assert not at.exception
    assert "two different digits" in at.warning[0].value

    matrix = picture(at, "Rows: the true digit")  # 10 x 10 counts after the row and column numbers
    assert sum(numbers_in(matrix)[-100:]) == len(mnist.test_labels)
    means = next(image for image in at.image if image.captions[:1] == ["digit 0"])
    assert means.captions == [f"digit {d}" for d in range(10)]

    at.segmented_control(key="baseline_metric").set_value("l1").run()
    assert not at.exception
    l1 = numbers_in(picture(at, "Rows: the true digit"))[-100:]
    correct = sum(l1[d * 11] for d in range(10))  # the diagonal of the row-major 10 x 10
    assert correct / len(mnist.test_labels) == pytest.approx(percent(metric(at, "L1 (sum of absolute differences) accuracy")), abs=1e-4)


def test_pages_without_data_show_the_fix(monkeypatch, tmp_path) -> None:
    from mnist_core.engine.data import load_cached

    (tmp_path / "data").mkdir()
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MNIST_CACHE_DIR", str(tmp_path / "cache"))
    load_cached.cache_clear()
    try:
        for page in ("pages/dataset.py", "pages/mean_images.py"):
            at = open_page(page)
            assert any("MNIST was not found" in e.value for e in at.error)
            assert len(at.file_uploader) == 1
            assert not at.metric  # the page stopped before showing anything computed
        home = open_page("pages/home.py")
        assert any("not loaded" in i.value for i in home.info)
        assert_no_server_path(home, tmp_path)
    finally:
        load_cached.cache_clear()


ABSOLUTE_PATH = re.compile(r"(^|[\s'\"`=(])/[\w.-]+/")


def assert_no_server_path(at: AppTest, *folders: Path) -> None:
    """No rendered element, main area or sidebar, shows an absolute path."""
    texts: list[str] = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            texts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    text = "\n".join(texts)
    assert texts and not ABSOLUTE_PATH.search(text), ABSOLUTE_PATH.search(text)
    assert not any(str(folder) in text for folder in folders)


def test_corrupt_data_gets_a_short_refusal_and_no_path(monkeypatch, tmp_path) -> None:
    import struct

    from mnist_core.engine.data import FILES, load_cached

    folder = tmp_path / "data"
    folder.mkdir()
    for stem in FILES.values():  # every file has a foreign magic number
        (folder / stem).write_bytes(struct.pack(">II", 0x1234, 0))
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("MNIST_DATA_DIR", str(folder))
    monkeypatch.setenv("MNIST_CACHE_DIR", str(tmp_path / "cache"))
    load_cached.cache_clear()
    try:
        start = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()  # the sidebar as first drawn
        assert "Data: not available — see any page" in [c.value for c in start.sidebar.caption]
        assert_no_server_path(start, tmp_path)
        at = open_page("pages/dataset.py")
        assert [e.value for e in at.error] == [
            "MNIST files on this server could not be used; the operator's log says why."
        ]
        assert len(at.file_uploader) == 1 and not at.metric
        assert_no_server_path(at, tmp_path)

        monkeypatch.setenv("MNIST_READ_ONLY", "1")
        at = open_page("pages/mean_images.py")
        assert not at.file_uploader and any("read-only" in i.value for i in at.info)
        assert not [b for b in at.button if "download" in b.label]
        assert_no_server_path(at, tmp_path)
    finally:
        load_cached.cache_clear()


def test_sidebar_says_where_the_data_came_from_in_words(mnist) -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()  # the sidebar as first drawn
    assert not at.exception, [e.value for e in at.exception]
    captions = [c.value for c in at.sidebar.caption]
    assert "Data: MNIST from the server's data folder, verified, 70,000 images" in captions
    assert_no_server_path(at, Path(mnist.folder))


def test_an_unusable_run_store_is_a_short_message_not_a_traceback(monkeypatch, tmp_path):
    """A runs folder the server cannot write: visitors get one sentence, the log the reason."""
    from pages.common import get_queue, get_store

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the run store should be")
    get_queue().shutdown()  # this process's workers: the next page opens a fresh queue
    monkeypatch.setenv("MNIST_RUNS_DIR", str(blocked / "runs"))
    get_store.clear()
    get_queue.clear()
    try:
        at = AppTest.from_file(str(APP), default_timeout=60).run()
        assert not at.exception
        shown = " ".join(str(e.value) for e in at.error)
        assert "run store on this server cannot be opened" in shown and str(tmp_path) not in shown
    finally:
        get_store.clear()
        get_queue.clear()
