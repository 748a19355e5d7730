"""End to end in a real browser: every page renders, Train → Evaluate works, drawing is read.

One server and one Chromium serve the whole module. The run trained through the Train page (the
`trained_run` fixture) is reused by the later tests, as a visitor would reuse it.
"""

from __future__ import annotations

import re

import pytest

from mnist_core.bench.classroom import POINTS_JS  # the step chart's last plotted step, as the bench reads it
from tests.browser import (
    PAGES,
    chromium,
    exception_texts,
    new_tab,
    page_url,
    screenshot,
    server_paths_in,
    streamlit_server,
    wait_until_idle,
)

pytestmark = pytest.mark.browser

FINISHED = re.compile(r"Finished: test accuracy (\d+\.\d+%)")
TRAIN_TIMEOUT_MS = 90_000
RUN_PAGES = ("train", "evaluate", "compare", "draw", "inside")  # they change once a run exists
IN_VIEW_JS = """(selector) => {
    const box = document.querySelector(selector).getBoundingClientRect();
    return box.top < window.innerHeight && box.bottom > 0;
}"""


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture()
def page(browser, server):
    context, tab = new_tab(browser)
    yield tab
    context.close()


def open_page(page, server, path: str) -> None:
    page.goto(page_url(server, path))
    wait_until_idle(page, server)


def assert_healthy(page, server, title: str) -> None:
    """The page shows its title and neither an exception box nor an error alert."""
    assert page.locator('[data-testid="stMain"] h1').first.inner_text().strip() == title
    assert exception_texts(page) == [], server.log_text()
    errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    assert errors == [], errors
    assert "Uncaught app execution" not in server.log_text(), server.log_text()
    assert server_paths_in(page.locator("body").inner_text(), server) == []


def give_name(page, name: str) -> None:
    """A first-time visitor types their name into the Train form (asked once, at Launch)."""
    box = page.get_by_role("textbox", name="Your name (shown on your runs)")
    if box.count():
        box.fill(name)


def launch_linear(page, seed: int, name: str = "Ada") -> None:
    """Fill the Train form the way a visitor does: model linear, 1 epoch, the given seed."""
    give_name(page, name)
    model = page.get_by_role("combobox", name="Model")
    model.click()
    page.get_by_role("option", name=re.compile(r"^linear\b")).click()
    assert model.input_value().startswith("linear")
    page.get_by_role("spinbutton", name="Epochs").fill("1")
    seed_box = page.get_by_role("spinbutton", name="Seed")
    seed_box.fill(str(seed))
    seed_box.press("Tab")  # commit the typed value before the form is submitted
    page.get_by_role("button", name="Launch training").click()


@pytest.fixture(scope="module")
def trained_run(browser, server) -> tuple[str, str]:
    """(run id, test accuracy as shown) of a linear run launched through the Train page."""
    context, tab = new_tab(browser)
    try:
        open_page(tab, server, "train")
        launch_linear(tab, seed=0)
        finished = tab.get_by_text(FINISHED)
        finished.wait_for(timeout=TRAIN_TIMEOUT_MS)
        wait_until_idle(tab, server)
        # Launch brought the run's section (below the long form) into view by itself.
        assert tab.evaluate(IN_VIEW_JS, ".st-key-train_run_section"), "the page did not move to the run"
        assert_healthy(tab, server, PAGES["train"])
        screenshot(tab, "train-finished")
        accuracy = FINISHED.search(finished.inner_text()).group(1)
        run_id = re.search(r"[?&]run=([\w.-]+)", tab.url).group(1)
        return run_id, accuracy
    finally:
        context.close()


@pytest.mark.parametrize("path", list(PAGES), ids=lambda path: path or "home")
def test_every_page_loads_before_any_run(page, server, path):
    open_page(page, server, path)
    assert_healthy(page, server, PAGES[path])
    name = path or "home"
    screenshot(page, f"{name}-empty" if path in RUN_PAGES else name)


def test_train_then_evaluate_shows_the_run(page, server, trained_run):
    run_id, accuracy = trained_run
    assert run_id.startswith("linear-")
    open_page(page, server, "evaluate")
    assert_healthy(page, server, PAGES["evaluate"])
    chosen = page.get_by_role("combobox", name="Run", exact=True).input_value()
    assert run_id in chosen and accuracy in chosen
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Test accuracy")
    assert metric.locator('[data-testid="stMetricValue"]').inner_text().strip() == accuracy


@pytest.mark.parametrize("path", RUN_PAGES)
def test_run_pages_load_with_a_run(page, server, trained_run, path):
    open_page(page, server, path)
    assert_healthy(page, server, PAGES[path])
    screenshot(page, path)


def test_draw_a_one_and_see_it_read(page, server, trained_run):
    open_page(page, server, "draw")
    # The Draw page's own drawing surface is a v2 component (no iframe): Playwright's CSS
    # locators reach its canvas directly.
    canvas = page.locator("canvas.draw-surface")
    canvas.wait_for()
    box = canvas.bounding_box()
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(x + 4, box["y"] + box["height"] * 0.8, steps=25)
    page.mouse.up()
    prediction = page.get_by_text(re.compile(r"^Prediction: \d$"))
    prediction.wait_for(timeout=30_000)
    wait_until_idle(page, server)
    assert page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').count() == 1
    assert_healthy(page, server, PAGES["draw"])
    screenshot(page, "draw-prediction")
    # A clean vertical stroke is a 1 even for the linear model (it read 98% "1" when written).
    assert prediction.inner_text() == "Prediction: 1"


def test_step_charts_grow_within_the_first_epoch(page, server):
    """Live for real: during epoch 1 of a 1-epoch run, every poll plots later steps."""
    open_page(page, server, "train")
    model = page.get_by_role("combobox", name="Model")
    model.click()
    # 13,500 steps of the costliest model: a minute or more, never over before the Stop click
    # below (an mlp's epoch took 12 s on a fast CPU: the run could end just before the click).
    page.get_by_role("option", name=re.compile(r"^cnn-best\b")).click()
    page.get_by_role("spinbutton", name="Epochs").fill("1")
    page.get_by_role("spinbutton", name="Batch size").fill("4")
    seed_box = page.get_by_role("spinbutton", name="Seed")
    seed_box.fill("777")
    seed_box.press("Tab")
    give_name(page, "Lin")
    page.get_by_role("button", name="Launch training").click()
    try:
        page.wait_for_function(f"() => ({POINTS_JS})() > 0", timeout=30_000)
    except Exception:
        screenshot(page, "train-live-failed")
        raise
    last_steps = []
    for _ in range(3):
        last_steps.append(page.evaluate(POINTS_JS))
        assert "epoch 1 of 1" in page.locator('[data-testid="stProgress"]').inner_text()
        page.wait_for_timeout(4_500)  # at least two polls of the page (one every 2 s)
    assert last_steps[0] < last_steps[1] < last_steps[2], last_steps
    screenshot(page, "train-live")
    page.get_by_role("button", name="Stop training").click()
    page.get_by_text(re.compile(r"^Cancelled: Stopped by request")).wait_for(timeout=30_000)
