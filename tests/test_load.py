"""Load: 8 browser sessions at once against one `streamlit run app.py`, each launching a run.

What a classroom does to a shared deployment: the teacher opens the link, then everyone opens
the dashboard at the same time, looks around (moving between pages with the navigation, as
people do) and presses Launch. The one server must queue the 8 runs (one trainer at a time),
finish every one, show no session an exception, and stay within memory.

The eight visitors' browsers run on the test machine itself, so most of the CPU in this test is
Chromium drawing pages, not the server (in a class each browser has its own computer). Measured
on the project's 2-core machine: eight separate browser profiles opening three pages by URL took
100-112 s, before and after the server changes alike. So the visitors are eight tabs of one
browser profile, which share its compiled scripts (one Plotly.js compile instead of eight), and
move between pages with the navigation links, as people do. The server sees the same load:
eight sessions, each with its own websocket, page runs and Launch.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from mnist_core.service.store import RunStore
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
BUDGET_S = 105  # for all sessions together, from the moment the class opens the link


async def assert_no_exception(page, where: str) -> None:
    shown = await page.evaluate(SEEN_EXCEPTIONS_JS)
    assert shown == [], f"{where}: exception box {shown}"


def left_ms(deadline: float) -> float:
    """Milliseconds until the shared deadline: every wait in every session draws on one budget."""
    return max(1.0, deadline - time.monotonic()) * 1000


NAVIGATION = {"dataset": "Dataset", "mean_images": "Mean images", "train": "Train"}


async def open_page(page, server: Server, path: str, who: str, deadline: float) -> None:
    """The first page by its URL (the shared link), the others through the sidebar's links."""
    if path == "":
        await page.goto(page_url(server, path), timeout=left_ms(deadline))
    else:
        nav = page.locator('[data-testid="stSidebar"]')  # the app's own page links
        await nav.get_by_role("link", name=NAVIGATION[path], exact=True).click(timeout=left_ms(deadline))
        await page.wait_for_url(f"**/{path}", timeout=left_ms(deadline))
    await page.wait_for_function(IDLE_JS, timeout=left_ms(deadline), polling=200)
    await assert_no_exception(page, f"{who} on /{path}")


async def one_session(context, server: Server, index: int, deadline: float) -> str:
    """Browse two pages, then launch `linear`, 1 epoch, seed 100+index on Train, wait for it to
    finish and return its run id."""
    who = f"session {index}"
    page = await context.new_page()
    try:
        await open_page(page, server, "", who, deadline)
        await open_page(page, server, "dataset" if index % 2 else "mean_images", who, deadline)
        await open_page(page, server, "train", who, deadline)
        await page.get_by_role("combobox", name="Model").click()
        await page.get_by_role("option", name=re.compile(r"^linear\b")).click()
        await page.get_by_role("spinbutton", name="Epochs").fill("1")
        seed = page.get_by_role("spinbutton", name="Seed")
        await seed.fill(str(100 + index))
        await seed.press("Tab")  # commit the typed value before the form is submitted
        await page.get_by_role("textbox", name="Your name (shown on your runs)").fill(f"Student {index}")
        await page.get_by_role("button", name="Launch training").click()
        await page.get_by_text(FINISHED).wait_for(timeout=left_ms(deadline))
        await assert_no_exception(page, f"{who} while training")
        return re.search(r"[?&]run=([\w.-]+)", page.url).group(1)
    finally:
        await page.close()


async def sample_memory(server: Server, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(server.memory_bytes())
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


async def teacher_opens_the_link(browser, server: Server) -> None:
    """Before class: one visit starts the server's trainers; wait until the sidebar says they
    are warm (torch loaded, data mapped), as a teacher would see before sharing the link."""
    page = await browser.new_page()
    deadline = time.monotonic() + 90
    await page.goto(page_url(server, ""))
    sidebar = page.locator('[data-testid="stSidebar"]')
    while not await sidebar.get_by_text(re.compile(r"^Trainers?: (\d+ )?ready$")).count():
        assert time.monotonic() < deadline, await sidebar.inner_text()
        await asyncio.sleep(1)
        await page.reload()
        await page.wait_for_function(IDLE_JS, timeout=60_000, polling=200)
    await page.close()


async def classroom(server: Server) -> tuple[list[str | BaseException], list[int]]:
    from playwright.async_api import async_playwright

    samples: list[int] = []
    stop = asyncio.Event()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(**launch_options())
        await teacher_opens_the_link(browser, server)
        sampler = asyncio.create_task(sample_memory(server, samples, stop))
        try:
            deadline = time.monotonic() + BUDGET_S
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            await context.add_init_script(WATCH_EXCEPTIONS_JS)
            outcomes = await asyncio.gather(
                *(one_session(context, server, index, deadline) for index in range(SESSIONS)),
                return_exceptions=True,
            )
        finally:
            stop.set()
            await sampler
            await browser.close()
    return outcomes, samples


def timing_report(store: RunStore, runs: list, started: float) -> str:
    """Per run, in click order: seconds from the class opening the link to its click, then from
    the click to its start, first stored step and end; and the end of all after the last click."""
    lines, ends, clicks = [], [], []
    opened = time.time() - (time.monotonic() - started)
    for run in sorted(runs, key=lambda r: r.created):
        steps = store.steps(run.id)
        first = f"+{run.started + steps[0]['elapsed'] - run.created:.1f} s" if run.started and steps else "-"
        begun = f"+{run.started - run.created:.1f} s" if run.started else "-"
        end = f"+{run.finished - run.created:.1f} s" if run.finished else "-"
        lines.append(f"  {run.id} clicked at {run.created - opened:.1f} s: started {begun}, first step {first}, "
                     f"{run.status} {end}")
        clicks.append(run.created)
        ends.append(run.finished)
    if clicks and all(ends):
        lines.append(f"  all finished {max(ends) - max(clicks):.1f} s after the last click")
    return "\n".join(lines)


@pytest.mark.timeout(180)
def test_eight_sessions_share_one_server():
    launch_options()  # skip (or fail in CI) before starting a server when Chromium is missing
    with streamlit_server() as server:
        started = time.monotonic()
        outcomes, samples = asyncio.run(classroom(server))
        elapsed = time.monotonic() - started
        log = server.log_text()
        store = RunStore(server.runs_dir)
        runs = store.list_runs()
        report = timing_report(store, runs, started)

    store_state = "\n".join(f"{r.id}: {r.status}, {r.epochs_done} epoch(s) done {r.message}" for r in runs)
    failures = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
    assert not failures, "\n".join(failures) + f"\n--- runs ---\n{store_state}\n{report}\n--- server log ---\n{log}"
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
    print(report)
