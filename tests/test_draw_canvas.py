"""The Draw page's drawing surface in a real browser: every stroke counts wherever it starts (mouse,
pen and touch), small and large digits reach the model alike, the answer is in the first screen of
a phone, and "Look inside" opens Inside the network on the drawn digit.

One server, one Chromium and one cnn-small run (trained here on 6,000 real images, seconds) serve
the module; two browser contexts (a phone with touch, a desktop with a mouse) do all the drawing.
"""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from PIL import Image

from mnist_core.engine.config import TrainConfig
from mnist_core.engine.data import Mnist
from mnist_core.engine.predict import strokes_to_gray
from mnist_core.engine.preprocess import mnist_style
from mnist_core.service.store import RunStore
from tests.browser import (
    chromium,
    exception_texts,
    page_url,
    screenshot,
    streamlit_server,
    wait_until_idle,
)
from tests.synthetic import train_here

SEED = 707  # a seed no other test uses
INSET = 3  # strokes start this many pixels inside the canvas's edge
REACH = 40  # and run this far towards its centre
PREVIEW_SRC_JS = """() => {
    const box = [...document.querySelectorAll('[data-testid="stImage"]')]
        .find(element => element.innerText.includes('28 x 28 pixels'));
    const img = box && box.querySelector('img');
    return img ? img.src : '';
}"""
PREDICTION = re.compile(r"^Prediction: \d$")


# -- the model's view of strokes (no browser) ---------------------------------------------------


def test_a_small_and_a_large_stroke_reach_the_model_alike() -> None:
    """The pen scales with the drawing: a short and a long vertical line give the same 28x28."""
    small = mnist_style(strokes_to_gray([[[0.1, 0.1], [0.1, 0.25]]]))
    large = mnist_style(strokes_to_gray([[[0.5, 0.05], [0.5, 0.95]]]))
    np.testing.assert_allclose(small, large, atol=1e-5)
    rows = int((small > 0.1).any(axis=1).sum())
    assert rows == 20 and 2.2 < small.sum() / rows < 3.4  # 20 tall, about as thick as MNIST's 1s


def test_strokes_from_the_browser_are_checked() -> None:
    assert strokes_to_gray([]) is None and strokes_to_gray([[]]) is None
    assert strokes_to_gray([[[0.5, 0.5]]]).max() == 1.0  # a tap is a dot
    for bad in ("ink", [[["a", "b"]]], [[[0.1, float("nan")]]], [[[0.1, 0.2, 0.3]]], [[[0.1, 0.1]]] * 201):
        with pytest.raises(ValueError):
            strokes_to_gray(bad)


# -- in the browser -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(mnist):
    with streamlit_server() as running:
        small = Mnist(mnist.train_images[:6000], mnist.train_labels[:6000], mnist.test_images[:500],
                      mnist.test_labels[:500], source=mnist.source, folder=mnist.folder)
        config = TrainConfig(model="cnn-small", epochs=1, batch_size=64, lr=3e-3, val_split=0.0, seed=SEED,
                             device="cpu")
        assert train_here(RunStore(running.runs_dir), config, small) == "finished"
        yield running


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as launched:
        yield launched


def open_draw(browser, server, **context_options):
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.goto(page_url(server, "draw"))
    wait_until_idle(page, server)
    canvas = page.locator("canvas.draw-surface")
    canvas.wait_for()
    canvas.scroll_into_view_if_needed()
    return context, page, canvas


def preview_src(page) -> str:
    """The address of the 'what the model sees' image, '' while there is none (one DOM read, so a
    rerun that replaces the image cannot leave a locator waiting for it)."""
    return page.evaluate(PREVIEW_SRC_JS)


def preview(page) -> np.ndarray | None:
    """The 28x28 'what the model sees' image as shown (each pixel a 6x6 block), or None."""
    src = preview_src(page)
    if not src:
        return None
    pixels = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("L"), dtype=np.float32)
    return pixels[3::6, 3::6] / 255.0


def after(page, server, before: str, timeout_s: float = 20.0) -> None:
    """Wait until the preview is another image than `before` (or none) and the rerun is over."""
    deadline = time.monotonic() + timeout_s
    while preview_src(page) == before:
        assert time.monotonic() < deadline, f"the preview never changed from {before!r}"
        page.wait_for_timeout(100)
    wait_until_idle(page, server)


def start_points(box: dict) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """name -> (start a few px inside the canvas at that edge or corner, end towards the centre)."""
    left, top = box["x"] + INSET, box["y"] + INSET
    right, bottom = box["x"] + box["width"] - INSET, box["y"] + box["height"] - INSET
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    starts = {
        "top-left": (left, top), "top": (cx, top), "top-right": (right, top), "right": (right, cy),
        "bottom-right": (right, bottom), "bottom": (cx, bottom), "bottom-left": (left, bottom), "left": (left, cy),
    }
    ends = {}
    for name, (x, y) in starts.items():
        dx, dy = cx - x, cy - y
        length = max(np.hypot(dx, dy), 1.0)
        ends[name] = (x + dx / length * REACH, y + dy / length * REACH)
    return {name: (starts[name], ends[name]) for name in starts}


def along(start, end, steps: int = 6) -> list[tuple[float, float]]:
    """The points after `start` on the straight way to `end`."""
    return [(start[0] + (end[0] - start[0]) * i / steps, start[1] + (end[1] - start[1]) * i / steps)
            for i in range(1, steps + 1)]


def touch_stroke(cdp, start, end) -> None:
    def send(kind: str, points: list) -> None:
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y} for x, y in points]})

    send("touchStart", [start])
    for point in along(start, end):
        send("touchMove", [point])
    send("touchEnd", [])


def pen_stroke(cdp, start, end) -> None:
    def send(kind: str, point: tuple[float, float], buttons: int) -> None:
        cdp.send("Input.dispatchMouseEvent", {"type": kind, "x": point[0], "y": point[1], "button": "left",
                                              "buttons": buttons, "clickCount": 1, "pointerType": "pen"})

    send("mousePressed", start, 1)
    for point in along(start, end):
        send("mouseMoved", point, 1)
    send("mouseReleased", end, 0)


def mouse_stroke(page, start, end) -> None:
    """Come from outside the canvas and press at once: a stroke must not wait for a hover."""
    outside = (start[0] - 2 * (end[0] - start[0]), start[1] - 2 * (end[1] - start[1]))
    page.mouse.move(*outside)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=6)
    page.mouse.up()


def assert_healthy(page, server) -> None:
    assert exception_texts(page) == [], server.log_text()
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert "Uncaught app execution" not in server.log_text(), server.log_text()


@pytest.mark.browser
def test_touch_strokes_from_every_edge_count_on_a_phone(browser, server):
    context, page, canvas = open_draw(browser, server, viewport={"width": 400, "height": 760}, has_touch=True,
                                      is_mobile=True, device_scale_factor=2)
    try:
        box = canvas.bounding_box()
        assert box["width"] == box["height"] and box["x"] >= 0 and box["x"] + box["width"] <= 400  # not clipped
        cdp = context.new_cdp_session(page)
        assert preview(page) is None
        last = stroke_from_every_edge(page, server, box, lambda start, end: touch_stroke(cdp, start, end))
        # The answer is in the first screen: the canvas's top and the prediction fit one phone screen.
        canvas.scroll_into_view_if_needed()
        answer = page.get_by_text(PREDICTION)
        top, bottom = canvas.bounding_box()["y"], answer.bounding_box()["y"] + answer.bounding_box()["height"]
        assert bottom - top <= 760, (top, bottom)
        screenshot(page, "draw-touch-400px")
        # Undo and Clear are plain buttons under the canvas, there to tap.
        before = preview_src(page)
        page.get_by_role("button", name="Undo").tap()
        after(page, server, before)
        assert not np.array_equal(preview(page), last)
        before = preview_src(page)
        page.get_by_role("button", name="Clear").tap()
        after(page, server, before)
        assert preview(page) is None
        assert page.get_by_text(PREDICTION).count() == 0
        assert_healthy(page, server)
    finally:
        context.close()


def stroke_from_every_edge(page, server, box, stroke) -> np.ndarray:
    """One stroke starting just inside each edge and corner; each must change what the model
    sees (the 28x28 preview). Returns the last preview."""
    last = None
    for name, (start, end) in start_points(box).items():
        before = preview_src(page)
        stroke(start, end)
        after(page, server, before)
        current = preview(page)
        assert current is not None and (last is None or not np.array_equal(current, last)), name
        last = current
    return last


@pytest.mark.browser
def test_mouse_and_pen_strokes_sizes_and_look_inside(browser, server):
    context, page, canvas = open_draw(browser, server, viewport={"width": 1400, "height": 900})
    try:
        box = canvas.bounding_box()
        column = page.locator('[data-testid="stColumn"]').filter(has=canvas).first.bounding_box()
        assert box["x"] + box["width"] <= column["x"] + column["width"] + 0.5  # nothing clipped
        cdp = context.new_cdp_session(page)
        last = stroke_from_every_edge(page, server, box, lambda start, end: mouse_stroke(page, start, end))
        before = preview_src(page)
        corner = start_points(box)["top-right"][0]
        pen_stroke(cdp, corner, (corner[0] - REACH, corner[1] + REACH / 4))  # new ink from the top-right corner
        after(page, server, before)
        assert not np.array_equal(preview(page), last)

        def one(top: float, bottom: float, x: float) -> np.ndarray:
            before = preview_src(page)
            page.get_by_role("button", name="Clear").click()
            if before:
                after(page, server, before)
            page.mouse.move(x, top)
            page.mouse.down()
            page.mouse.move(x, bottom, steps=10)
            page.mouse.up()
            after(page, server, "")
            assert page.get_by_text(PREDICTION).count() == 1
            return preview(page)

        small = one(box["y"] + 10, box["y"] + 60, box["x"] + 20)  # a small 1 in the top-left corner
        large = one(box["y"] + 15, box["y"] + box["height"] - 15, box["x"] + box["width"] / 2)  # canvas-tall
        assert np.abs(small - large).mean() < 0.02, np.abs(small - large).mean()
        rows, cols = np.indices(large.shape)
        assert abs((large * rows).sum() / large.sum() - 14) < 1 and abs((large * cols).sum() / large.sum() - 14) < 1
        screenshot(page, "draw-large-one")

        page.get_by_role("button", name="Look inside this prediction").click()
        page.get_by_role("heading", name="Inside the network").wait_for(timeout=30_000)
        wait_until_idle(page, server)
        assert page.get_by_role("radio", name="The digit you drew").is_checked()
        assert page.get_by_role("tab", name="Feature maps", selected=True).count() == 1  # a CNN's view
        assert "no templates" not in page.locator('[data-testid="stMain"]').inner_text()
        assert page.locator('[data-testid="stMain"]').get_by_text("conv2 (features.").count() >= 1
        shown = page.locator('[data-testid="stImage"]:has-text("the input") img').first
        pixels = np.asarray(Image.open(io.BytesIO(page.request.get(shown.evaluate("img => img.src")).body()))
                            .convert("L"), dtype=np.float32) / 255.0
        np.testing.assert_allclose(pixels[2::4, 2::4], large, atol=1 / 255 + 1e-6)  # the digit just drawn
        assert_healthy(page, server)
        screenshot(page, "inside-drawn-digit")
        # Back on Draw, the drawing is still there and still read.
        page.get_by_role("link", name="Draw").click()
        page.get_by_text(PREDICTION).wait_for(timeout=30_000)
        wait_until_idle(page, server)
        np.testing.assert_array_equal(preview(page), large)
        assert_healthy(page, server)
    finally:
        context.close()
