"""Page speed: how long each page takes until it is drawn, in a real browser on a real server.

    python -m mnist_core.bench --pages

Needs the test requirements (playwright), Debian's chromium and MNIST_DATA_DIR. One finished
cnn-sprint run is trained into the server's store first, so the run pages show a real model.
Prints, per page:
- the first visit since the server started (each page's first time: its imports, data and
  cached summaries are paid here, once per server);
- moving to it from another page by its sidebar link on the warm server (median and worst of
  a few rounds);
and on Evaluate, a click on a confusion-matrix cell until that cell's images are shown.
"Drawn" means: the script run is over, the page shows its title, no skeleton is left, every
image has loaded and every chart has been drawn by Plotly.
"""

from __future__ import annotations

import os
import statistics
import time

from mnist_core.settings import Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.engine.device import cpu_header
from mnist_core.bench.serve import Server, bench_ready, chromium, streamlit_server

# URL path -> the title the page shows (its h1). Also the browser tests' list of pages.
PAGE_TITLES = {
    "": "Learn deep learning on MNIST",
    "dataset": "The dataset",
    "mean_images": "Mean images: the baseline first",
    "train": "Train a model",
    "evaluate": "Evaluate a model",
    "compare": "Compare runs",
    "sweeps": "Sweeps",
    "draw": "Draw a digit",
    "inside": "Inside the network",
}
DRAWN_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    const main = document.querySelector('[data-testid="stMain"]');
    if (!app || !main || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    const shown = main.querySelector('h1') || main.querySelector('[data-testid="stException"]');
    if (!shown || document.querySelector('[data-testid="stSkeleton"]')) return false;
    const images = [...main.querySelectorAll('img')].every(img => img.complete);
    const charts = [...main.querySelectorAll('[data-testid="stPlotlyChart"]')]
        .every(chart => chart.querySelector('.main-svg'));
    return images && charts;
}"""
TITLE_JS = """(title) => {
    const h1 = document.querySelector('[data-testid="stMain"] h1');
    return !!h1 && h1.innerText.trim() === title;
}"""
# Pixel centre of the confusion matrix's cell (true, predicted): the table's eleven columns (row
# labels, then predicted 0-9) and its eleven rows (header, then true 0-9) are equally wide and tall.
CELL_JS = """([truth, predicted]) => {
    const table = document.querySelector('[data-testid="stMain"] [data-testid="stDataFrame"]');
    table.scrollIntoView({block: 'center'});
    const box = table.getBoundingClientRect(), width = (box.width - 2) / 11, height = (box.height - 3) / 11;
    return {x: box.left + 1 + width * (predicted + 1.5), y: box.top + 1 + height * (truth + 1.5)};
}"""
# Whether the "Look inside one cell" sentence speaks of the cell (true, predicted).
CELL_SHOWN_JS = """([truth, predicted]) => {
    const text = document.querySelector('[data-testid="stMain"]').innerText;
    return truth === predicted ? text.includes(`of a ${truth} were classified correctly`)
        : text.includes(`of a ${truth} were taken for a ${predicted}`)
          || text.includes(`No test image of a ${truth} was predicted as ${predicted}`);
}"""
ROUNDS = 3


def wait_drawn(page, title: str, timeout_s: float = 120) -> None:
    page.wait_for_function(TITLE_JS, arg=title, timeout=timeout_s * 1000, polling=50)
    page.wait_for_function(DRAWN_JS, timeout=timeout_s * 1000, polling=50)


def train_one_run(server: Server) -> str:
    """A finished cnn-sprint run in the server's store, trained here, so run pages have a model."""
    from mnist_core.engine.data import load_mnist
    from mnist_core.service.lifecycle import HOST
    from mnist_core.service.jobs import execute, submit
    from mnist_core.service.store import RunStore

    config = TrainConfig(model="cnn-sprint", epochs=1, batch_size=128, lr=2e-2, schedule="onecycle")
    store = RunStore(server.runs_dir)
    run_id = submit(store, config, "bench", Limits(), worker=(os.getpid(), HOST)).run_id
    execute(store, run_id, config, load_mnist())
    return run_id


def first_visits(browser, server: Server) -> dict[str, float]:
    """Seconds from typing each page's address to the page drawn, each page's first time."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    seconds = {}
    for path, title in PAGE_TITLES.items():
        start = time.perf_counter()
        page.goto(f"{server.url}/{path}")
        wait_drawn(page, title)
        seconds[path] = time.perf_counter() - start
    context.close()
    return seconds


def navigations(browser, server: Server) -> dict[str, list[float]]:
    """Seconds from a sidebar link's click to that page drawn, ROUNDS times per page."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(server.url)
    wait_drawn(page, PAGE_TITLES[""])
    seconds: dict[str, list[float]] = {path: [] for path in PAGE_TITLES}
    order = [*list(PAGE_TITLES)[1:], ""]  # from home to each page in turn, and back home
    for _ in range(ROUNDS):
        for path in order:
            link = page.locator(f'[data-testid="stSidebar"] a[href="{path}"]')  # a link's href is its path
            start = time.perf_counter()
            link.click()
            wait_drawn(page, PAGE_TITLES[path])
            seconds[path].append(time.perf_counter() - start)
    context.close()
    return seconds


def confusion_clicks(browser, server: Server) -> list[float]:
    """Seconds from a click on a confusion-matrix cell to that cell's images drawn."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(f"{server.url}/evaluate")
    wait_drawn(page, PAGE_TITLES["evaluate"])
    seconds = []
    for truth, predicted in ((4, 9), (7, 2), (3, 5), (8, 8)):
        if page.evaluate(CELL_SHOWN_JS, [truth, predicted]):
            continue  # already the chosen cell: a click would change nothing
        point = page.evaluate(CELL_JS, [truth, predicted])
        start = time.perf_counter()
        page.mouse.click(point["x"], point["y"])
        page.wait_for_function(CELL_SHOWN_JS, arg=[truth, predicted], timeout=60_000, polling=50)
        page.wait_for_function(DRAWN_JS, timeout=60_000, polling=50)
        seconds.append(time.perf_counter() - start)
    context.close()
    return seconds


def main() -> int:
    if not bench_ready():
        return 2
    print(cpu_header())
    with chromium() as browser, streamlit_server() as server:
        train_one_run(server)
        first = first_visits(browser, server)
        warm = navigations(browser, server)
        clicks = confusion_clicks(browser, server)
    print("seconds until drawn: first visit since the server started | sidebar link on the warm server, "
          f"median (worst) of {ROUNDS}")
    for path in PAGE_TITLES:
        print(f"  {path or 'home':<12} {first[path]:6.2f} | {statistics.median(warm[path]):5.2f} "
              f"({max(warm[path]):.2f})")
    print("Evaluate, click on a confusion-matrix cell until its images are drawn: "
          + ", ".join(f"{s:.2f}" for s in clicks) + " s")
    return 0
