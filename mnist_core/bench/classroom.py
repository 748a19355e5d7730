"""Classroom benchmark: the dashboard's run path measured through a real server and browser.

    python -m mnist_core.bench --classroom

Needs the test requirements (playwright) and Debian's chromium. Prints:
- one Launch of `linear`, 1 epoch, on an idle warm server: click -> queued -> started -> first
  stored step -> first plotted step -> finished;
- a worker's training throughput (cnn-small) alone and while 8 tabs poll the server, for the
  thread count, niceness and OpenMP wait policy chosen by default and for the alternatives,
  with the cores the trainer, the web server and the browser each used while the tabs polled.
  The tabs poll twice: in Chromium on this machine, and from "elsewhere" (`RemoteTabs`: the
  same messages, without a browser on the server's cores, as in a class where each student's
  browser runs on the student's computer).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from mnist_core.settings import Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.engine.device import cpu_header
from mnist_core.service.lifecycle import run_id_for
from mnist_core.service.jobs import submit
from mnist_core.bench.remote_tabs import RemoteTabs
from mnist_core.service.store import RunStore
from mnist_core.bench.serve import Server, bench_ready, chromium, descendants, streamlit_server

IDLE_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    const main = document.querySelector('[data-testid="stMain"]');
    return !!(app && main && app.getAttribute('data-test-script-state') === 'notRunning' && main.querySelector('h1'));
}"""
# The last step the Train page's step-loss chart shows, 0 before it has any (also read by the
# browser tests). The step, not the point count: long curves are drawn thinned to 400 points.
POINTS_JS = """() => {
    const plot = [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')]
        .find(p => p.data && p.layout && p.layout.xaxis && p.layout.xaxis.title
                   && JSON.stringify(p.layout.xaxis.title).includes('step (batch)'));
    // Plotly decodes the base64 arrays Streamlit sends into _fullData.
    const trace = plot && plot._fullData && plot._fullData[0];
    return trace && trace._length ? Number(trace.x[trace._length - 1]) : 0;
}"""
TABS = 8
# The workers' settings compared: (label, environment of the server and so of its workers).
SETTINGS = (
    ("default", {}),
    ("OpenMP waiting: spin 1000 (GOMP_SPINCOUNT=1000)", {"GOMP_SPINCOUNT": "1000"}),
    ("workers at nice 10 (MNIST_TRAIN_NICE=10)", {"MNIST_TRAIN_NICE": "10"}),
    ("1 thread (MNIST_TRAIN_THREADS=1)", {"MNIST_TRAIN_THREADS": "1"}),
)
LONG = TrainConfig(model="cnn-small", epochs=20, batch_size=64, seed=4242)  # stopped once measured


def warm(browser, server: Server) -> None:
    """Open the link once and wait until the sidebar says the trainers are warm."""
    page = browser.new_page()
    deadline = time.monotonic() + 120
    page.goto(server.url)
    while not page.locator('[data-testid="stSidebar"]').get_by_text(re.compile(r"^Trainers?: (\d+ )?ready$")).count():
        if time.monotonic() > deadline:
            raise RuntimeError("the trainers never became ready")
        time.sleep(1)
        page.reload()
        page.wait_for_function(IDLE_JS, timeout=60_000)
    page.close()


def launch_latency(browser, server: Server, seed: int) -> dict[str, float]:
    """Seconds from the Launch click to each stage of one linear run."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server.url}/train")
    page.wait_for_function(IDLE_JS, timeout=60_000)
    page.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name=re.compile(r"^linear\b")).click()
    page.get_by_role("spinbutton", name="Epochs").fill("1")
    seed_box = page.get_by_role("spinbutton", name="Seed")
    seed_box.fill(str(seed))
    seed_box.press("Tab")
    page.get_by_role("textbox", name="Your name (shown on your runs)").fill(f"Bench {seed}")  # a first visit
    clicked = time.time()
    page.get_by_role("button", name="Launch training").click()
    page.wait_for_function(f"() => ({POINTS_JS})() > 0", timeout=60_000, polling=50)
    plotted = time.time()
    page.get_by_text(re.compile(r"Finished: test accuracy")).wait_for(timeout=60_000)
    shown_finished = time.time()
    page.close()
    store = RunStore(server.runs_dir)
    run = store.get_run(run_id_for(TrainConfig(model="linear", epochs=1, seed=seed)))
    first = store.steps(run.id)[0]
    return {
        "queued": run.created - clicked, "started": run.started - clicked,
        "first step stored": run.started + first["elapsed"] - clicked, "first step plotted": plotted - clicked,
        "finished": run.finished - clicked, "finished shown": shown_finished - clicked,
    }


def images_per_s(store: RunStore, run_id: str, seconds: float) -> float:
    """Training throughput over the next `seconds`, from the run's stored steps."""
    def last() -> dict:
        row = store.last_step(run_id)
        while row is None:
            time.sleep(0.2)
            row = store.last_step(run_id)
        return row

    first = last()
    time.sleep(seconds)
    second = last()
    return (second["step"] - first["step"]) * LONG.batch_size / max(second["elapsed"] - first["elapsed"], 1e-9)


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far (from /proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return total / os.sysconf("SC_CLK_TCK")


def process_groups(server: Server) -> dict[str, list[int]]:
    """The processes sharing the cores while tabs poll: the web server, its training workers,
    the browser (this process's other descendants) and this process (Playwright's client, or
    the remote tabs)."""
    workers = descendants(server.process.pid)
    others = set(descendants(os.getpid())) - set(workers) - {server.process.pid}
    return {"trainer": workers, "web server": [server.process.pid], "browser": sorted(others), "bench": [os.getpid()]}


@dataclass
class Polled:
    """Training throughput while tabs polled, the cores each group of processes used, and the
    polls the server answered per second (counted for the remote tabs only)."""

    images_per_s: float
    cores: dict[str, float]
    polls_per_s: float | None = None


def polled_throughput(store: RunStore, server: Server, run_id: str, seconds: float = 10) -> Polled:
    groups = process_groups(server)
    before, start = {name: cpu_seconds(pids) for name, pids in groups.items()}, time.perf_counter()
    polled = images_per_s(store, run_id, seconds)
    elapsed = time.perf_counter() - start
    return Polled(polled, {name: (cpu_seconds(pids) - before[name]) / elapsed for name, pids in groups.items()})


def throughput(browser, server: Server) -> tuple[float, dict[str, Polled]]:
    """Images/s of a cnn-small run alone, then while TABS Chromium tabs on this machine watch
    it live, then while TABS tabs elsewhere do (their messages sent by `RemoteTabs`: a class's
    browsers run on the students' computers, not on the server's cores)."""
    store = RunStore(server.runs_dir)
    run_id = submit(store, LONG, "bench", Limits(max_epochs=100)).run_id  # owned by "bench": the tabs only watch
    while store.get_run(run_id).status == "queued" or store.last_step(run_id) is None:
        time.sleep(0.2)
    time.sleep(2)
    alone = images_per_s(store, run_id, 8)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pages = [context.new_page() for _ in range(TABS)]
    for page in pages:
        page.goto(f"{server.url}/train?run={run_id}")
    for page in pages:
        page.wait_for_function(IDLE_JS, timeout=180_000)  # 8 tabs drawing at once on a small machine
    polled = {"tabs here": polled_throughput(store, server, run_id)}
    context.close()
    time.sleep(2)
    with RemoteTabs(server.url, "train", f"run={run_id}", TABS) as tabs:
        tabs.wait_polling()
        answered, start = tabs.counts["polls answered"], time.perf_counter()
        polled["tabs elsewhere"] = polled_throughput(store, server, run_id)
        polled["tabs elsewhere"].polls_per_s = (tabs.counts["polls answered"] - answered) / (time.perf_counter() - start)
    store.request_stop(run_id)
    return alone, polled


def report(label: str, alone: float, polled: dict[str, Polled]) -> None:
    print(f"  {label}: alone {alone:7,.0f} images/s", flush=True)
    for name, result in polled.items():
        pace = f", {result.polls_per_s:.1f} polls answered per s" if result.polls_per_s is not None else ""
        print(f"    {TABS} {name:<14} {result.images_per_s:7,.0f} images/s ({result.images_per_s / alone:.2f}x); "
              "cores used: " + ", ".join(f"{group} {used:.2f}" for group, used in result.cores.items()) + pace,
              flush=True)


def main() -> int:
    if not bench_ready():
        return 2
    print(cpu_header())
    with chromium() as browser:
        with streamlit_server() as server:
            warm(browser, server)
            print("Launch of linear, 1 epoch, on an idle warm server (seconds after the click):")
            for seed in (9001, 9002, 9003):
                stages = launch_latency(browser, server, seed)
                print("  " + ", ".join(f"{name} {value:.2f}" for name, value in stages.items()))
        print(f"cnn-small (batch 64) throughput in a worker, alone and while {TABS} tabs watch it on the Train page, "
              "in Chromium on this machine or elsewhere (their polls sent without a browser: no drawing here):")
        for label, overrides in SETTINGS:
            with streamlit_server(overrides) as server:
                warm(browser, server)
                report(label, *throughput(browser, server))
    return 0
