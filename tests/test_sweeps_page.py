"""The Sweeps page in a real browser: a sweep launched from the form trains on the server's
warm workers, then moving a slider shows another member's curves, named, with its neighbours."""

from __future__ import annotations

import re

import pytest

from mnist_core.service.store import RunStore
from tests.browser import (
    chromium,
    exception_texts,
    new_tab,
    page_url,
    screenshot,
    server_paths_in,
    streamlit_server,
    visitor_cookie,
    wait_until_idle,
)

pytestmark = pytest.mark.browser


def legend(page) -> list[str]:
    """The names in the first curve chart's legend (the shown member and its faint neighbours)."""
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    return sorted(chart.locator(".legendtext").evaluate_all("els => els.map(e => e.textContent)"))


def pick(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def test_a_sweep_launched_in_the_browser_is_explored_with_sliders():
    with streamlit_server() as server, chromium() as browser:
        context, page = new_tab(browser, [visitor_cookie(server, "Ada")])
        page.goto(page_url(server, "sweeps?tab=launch"))
        wait_until_idle(page, server)
        pick(page, "Learning rate", "0.01")
        pick(page, "Batch size", "128")
        launch = page.get_by_role("button", name="Launch 4 runs")
        launch.wait_for(timeout=30_000)
        launch.click()
        page.get_by_text("Sweep launched: 4 run(s) queued").wait_for(timeout=30_000)
        # .first: while a rerun replaces the page's tabs, their stale copy can show the same line
        page.get_by_text("4 of 4 finished").first.wait_for(timeout=180_000)
        wait_until_idle(page, server)
        store = RunStore(server.runs_dir)
        (sweep,) = store.list_sweeps()
        assert sweep.owner == "Ada" and len(store.sweep_members(sweep.id)) == 4

        showing = page.get_by_text(re.compile(r"^Showing ")).inner_text()
        before = legend(page)
        # Opens on the first member, its neighbour along the first swept setting drawn faint.
        assert before == ["linear · lr 0.001 · batch 64", "linear · lr 0.01 · batch 64"], before
        slider = page.get_by_role("slider", name="Batch size")
        slider.focus()
        slider.press("ArrowRight")
        page.wait_for_function(
            "old => [...document.querySelectorAll('p, div')].some(e => e.innerText && "
            "e.innerText.startsWith('Showing ') && e.innerText !== old)", arg=showing, timeout=30_000)
        wait_until_idle(page, server)
        after = legend(page)
        moved = page.get_by_text(re.compile(r"^Showing ")).inner_text()
        assert moved.startswith("Showing lr 0.001 · batch 128") and "Faint: batch 64" in moved, moved
        assert after == ["linear · lr 0.001 · batch 128", "linear · lr 0.001 · batch 64"], after
        assert page.get_by_text("Confusion matrix").count() >= 1
        text = page.locator("body").inner_text()
        assert "Each line is one finished member" in text and "Test accuracy" in text
        assert exception_texts(page) == [] and server_paths_in(text, server) == [], server.log_text()
        screenshot(page, "sweeps-explorer")
        context.close()
