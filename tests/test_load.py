"""Load: 8 browser sessions at once against one `streamlit run app.py`, each launching a run.

What a classroom does to a shared deployment: everyone opens the dashboard at the same time,
looks around and presses Launch. The one server must queue the 8 runs (one trainer at a time),
finish every one, show no session an exception, and stay within memory.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from mnist_core.runs import RunStore
from tests.browser import (
    IDLE_JS,
    SEEN_EXCEPTIONS_JS,
    WATCH_EXCEPTIONS_JS,
    Server,
    launch_options,
    page_url,
    streamlit_server,
)

pytestmark = [pytest.mark.load, pytest.mark.browser]

SESSIONS = 8
MEMORY_LIMIT = 2 * 1024**3
FINISHED = re.compile(r"Finished: test accuracy \d+\.\d+%")
BUDGET_S = 105  # for all sessions together, so that the whole test stays under 2 minutes


async def assert_no_exception(page, where: str) -> None:
    shown = await page.evaluate(SEEN_EXCEPTIONS_JS)
    assert shown == [], f"{where}: exception box {shown}"


def left_ms(deadline: float) -> float:
    """Milliseconds until the shared deadline: every wait in every session draws on one budget."""
    return max(1.0, deadline - time.monotonic()) * 1000


async def open_page(page, server: Server, path: str, who: str, deadline: float) -> None:
    await page.goto(page_url(server, path), timeout=left_ms(deadline))
    await page.wait_for_function(IDLE_JS, timeout=left_ms(deadline), polling=200)
    await assert_no_exception(page, f"{who} on /{path}")


async def one_session(browser, server: Server, index: int, deadline: float) -> str:
    """Browse two pages, then launch `linear`, 1 epoch, seed 100+index on Train, wait for it to
    finish and return its run id."""
    who = f"session {index}"
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.add_init_script(WATCH_EXCEPTIONS_JS)
    try:
        page = await context.new_page()
        await open_page(page, server, "", who, deadline)
        await open_page(page, server, "dataset" if index % 2 else "mean_images", who, deadline)
        await open_page(page, server, "train", who, deadline)
        await page.get_by_role("combobox", name="Model").click()
        await page.get_by_role("option", name=re.compile(r"^linear\b")).click()
        await page.get_by_role("spinbutton", name="Epochs").fill("1")
        seed = page.get_by_role("spinbutton", name="Seed")
        await seed.fill(str(100 + index))
        await seed.press("Tab")  # commit the typed value before the form is submitted
        await page.get_by_role("button", name="Launch training").click()
        await page.get_by_text(FINISHED).wait_for(timeout=left_ms(deadline))
        await assert_no_exception(page, f"{who} while training")
        return re.search(r"[?&]run=([\w.-]+)", page.url).group(1)
    finally:
        await context.close()


async def sample_memory(server: Server, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(server.memory_bytes())
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


async def classroom(server: Server) -> tuple[list[str | BaseException], list[int]]:
    from playwright.async_api import async_playwright

    samples: list[int] = []
    stop = asyncio.Event()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(**launch_options())
        sampler = asyncio.create_task(sample_memory(server, samples, stop))
        try:
            deadline = time.monotonic() + BUDGET_S
            outcomes = await asyncio.gather(
                *(one_session(browser, server, index, deadline) for index in range(SESSIONS)),
                return_exceptions=True,
            )
        finally:
            stop.set()
            await sampler
            await browser.close()
    return outcomes, samples


@pytest.mark.timeout(180)
def test_eight_sessions_share_one_server():
    launch_options()  # skip (or fail in CI) before starting a server when Chromium is missing
    started = time.monotonic()
    with streamlit_server() as server:
        outcomes, samples = asyncio.run(classroom(server))
        log = server.log_text()
        runs = RunStore(server.runs_dir).list_runs()
    elapsed = time.monotonic() - started

    store_state = "\n".join(f"{r.id}: {r.status}, {r.epochs_done} epoch(s) done {r.message}" for r in runs)
    failures = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
    assert not failures, "\n".join(failures) + f"\n--- runs ---\n{store_state}\n--- server log ---\n{log}"
    assert "Uncaught app execution" not in log, log

    launched = set(outcomes)
    assert len(launched) == SESSIONS  # distinct seeds: 8 distinct runs, none served from cache
    assert launched == {run.id for run in runs}
    assert {run.status for run in runs} == {"finished"}, store_state
    # One trainer: no two runs were ever training at the same time.
    spans = sorted((run.started, run.finished) for run in runs)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))

    peak = max(samples)
    assert len(samples) > 10 and peak < MEMORY_LIMIT, f"peak memory (PSS) {peak / 1024**2:.0f} MiB"
    print(f"\n{SESSIONS} sessions, {len(runs)} runs finished in {elapsed:.0f} s; "
          f"server peak memory (PSS) {peak / 1024**2:.0f} MiB over {len(samples)} samples")
