"""Helpers for the real-browser tests: one `streamlit run app.py` server and headless Chromium.

The tests drive the app the way a visitor does (HTTP, websocket, JavaScript), which AppTest
cannot: it skips the frontend, custom components (the drawing canvas) and the server's sessions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mnist_core.bench import serve
from mnist_core.bench.pages import DRAWN_JS, PAGE_TITLES
from mnist_core.bench.serve import CHROMIUM, CHROMIUM_ARGS, Server, descendants, memory_of, visitor_cookie  # noqa: F401  (used by the tests)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "artifacts" / "screenshots"

PAGES = PAGE_TITLES  # url path -> the title the page shows (as the page bench reads them)


@contextmanager
def streamlit_server(env_overrides: dict[str, str] | None = None, args: list[str] | None = None) -> Iterator[Server]:
    """The dashboard in a child process (mnist_core.bench.serve), skipped without MNIST data and
    failing the test with the server's log if it does not come up."""
    if not os.environ.get("MNIST_DATA_DIR"):
        pytest.skip("MNIST_DATA_DIR is not set")
    try:
        with serve.streamlit_server(env_overrides, args) as server:
            yield server
    except serve.ServerError as error:
        pytest.fail(str(error))


def require_chromium() -> None:
    """Skip without Chromium on a developer machine; fail in CI, where MNIST_REQUIRE_BROWSER=1."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing (apt-get install chromium)"
    if os.environ.get("MNIST_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def launch_options() -> dict:
    """Arguments for `playwright.chromium.launch`: the system Chromium (`playwright install`
    cannot download browsers here), headless and quiet."""
    require_chromium()
    return {"executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless system Chromium (mnist_core.bench.serve), skipped or failed without it."""
    require_chromium()
    with serve.chromium() as browser:
        yield browser


def server_paths_in(text: str, server: Server) -> list[str]:
    """Server-side paths a page shows (none should be): the repository, the run store, the data
    folder, the temporary folder and home folders."""
    paths = [str(ROOT), str(server.runs_dir), os.environ.get("MNIST_DATA_DIR", ""), "/tmp/", "/home/", "/root/"]
    return [p for p in paths if p and p in text]


def new_tab(browser: Browser, cookies: list[dict] | None = None):
    """A fresh browser context (a new Streamlit session, with `cookies` if given, e.g. a
    returning visitor's) that records exception boxes; (context, page)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(WATCH_EXCEPTIONS_JS)
    if cookies:
        context.add_cookies(cookies)
    return context, context.new_page()


def page_url(server: Server, path: str) -> str:
    return f"{server.url}/{path}"


IDLE_JS = DRAWN_JS  # the script run is over and everything on the page is drawn


IDLE_STATE_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    const main = document.querySelector('[data-testid="stMain"]');
    return {
        script: app && app.getAttribute('data-test-script-state'),
        title: !!(main && main.querySelector('h1')),
        exceptions: document.querySelectorAll('[data-testid="stException"]').length,
        skeletons: document.querySelectorAll('[data-testid="stSkeleton"]').length,
        loadingImages: main ? [...main.querySelectorAll('img')].filter(img => !img.complete).length : 0,
        undrawnCharts: main ? [...main.querySelectorAll('[data-testid="stPlotlyChart"]')]
            .filter(chart => !chart.querySelector('.main-svg')).length : 0,
    };
}"""


def wait_until_idle(page: Page, server: Server | None = None, timeout_ms: float = 60_000) -> None:
    """Wait until the script run is over and its output drawn: Streamlit marks the app
    `notRunning`, the page shows its title (or an exception box, for the caller to report), lazily
    loaded elements have replaced their skeletons, images have loaded and Plotly has drawn every
    chart. On timeout, say which of these never happened (and show the server's log)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(IDLE_JS, timeout=timeout_ms, polling=100)
    except PlaywrightTimeout:
        log = f"\n--- streamlit log ---\n{server.log_text()}" if server else ""
        pytest.fail(f"{page.url} never settled within {timeout_ms / 1000:.0f} s: {page.evaluate(IDLE_STATE_JS)}{log}")


# Added to every browser context: remembers each exception box the page ever showed, so a box
# that a later rerun replaced is still caught. It lives until the next full navigation.
WATCH_EXCEPTIONS_JS = """
window.__stExceptions = [];
new MutationObserver(() => {
    for (const box of document.querySelectorAll('[data-testid="stException"]')) {
        const text = box.innerText.trim();
        if (!window.__stExceptions.includes(text)) window.__stExceptions.push(text);
    }
}).observe(document, {childList: true, subtree: true, characterData: true});
"""
SEEN_EXCEPTIONS_JS = """() => [...new Set([...(window.__stExceptions || []),
    ...[...document.querySelectorAll('[data-testid="stException"]')].map(box => box.innerText.trim())])]"""


def exception_texts(page: Page) -> list[str]:
    """Every Streamlit exception box this document has shown (none on a healthy page)."""
    return page.evaluate(SEEN_EXCEPTIONS_JS)


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page: Streamlit scrolls inside its main element, not the document, so the
    viewport is grown to the content's height for the shot (and restored afterwards)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    viewport = page.viewport_size
    page.mouse.move(0, 0)  # no hover tooltip over the content
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": min(max(height, viewport["height"]), 12_000)})
    try:
        page.wait_for_timeout(300)  # let charts and columns re-lay out at the new size
        wait_until_idle(page)
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(viewport)
    return path
