"""A dashboard server in a child process: what the browser tests and the classroom bench start.

`streamlit run app.py` on a free loopback port with its own empty run store, plus the memory of
the server and its training workers counted as PSS (pages shared between processes count once).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The system Chromium (Playwright cannot download its own browsers here), headless and quiet.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


class ServerError(RuntimeError):
    """The server exited or never answered its health check; the message holds its log."""


@dataclass
class Server:
    """A running dashboard: its address, process, private run store and captured log."""

    url: str
    process: subprocess.Popen
    runs_dir: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def memory_bytes(self) -> int:
        """Memory of the server and all its descendants (the warm training workers). Counted as
        PSS, so pages the processes share (torch's libraries, the workers' one mapped copy of
        MNIST) count once, not once per process as plain RSS would."""
        return sum(memory_of(pid) for pid in [self.process.pid, *descendants(self.process.pid)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in path.glob("*/children") if path.exists() else []:
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    pending, found = children_of(pid), []
    while pending:
        child = pending.pop()
        found.append(child)
        pending += children_of(child)
    return found


def memory_of(pid: int) -> int:
    """Proportional set size (Pss, from smaps_rollup) in bytes, falling back to VmRSS where the
    kernel lacks smaps_rollup; 0 when the process is gone."""
    for path, field in ((f"/proc/{pid}/smaps_rollup", "Pss"), (f"/proc/{pid}/status", "VmRSS")):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    return 0


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll /_stcore/health until it says "ok"; raise ServerError with the log if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"streamlit exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise ServerError(f"streamlit did not answer /_stcore/health within {timeout:.0f} s:\n"
                      f"{log.read_text(errors='replace')}")


@contextmanager
def streamlit_server(env_overrides: dict[str, str] | None = None, args: list[str] | None = None) -> Iterator[Server]:
    """Start `streamlit run app.py` on a free loopback port with its own empty run store, which
    is deleted afterwards (read the log and the store inside the `with`)."""
    workdir = Path(tempfile.mkdtemp(prefix="mnist-browser-"))
    runs_dir, log = workdir / "runs", workdir / "streamlit.log"
    env = {**os.environ, "MNIST_RUNS_DIR": str(runs_dir)}
    for cap in ("MNIST_MAX_EPOCHS", "MNIST_READ_ONLY"):  # tests and benches need training on
        env.pop(cap, None)
    env.update(env_overrides or {})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", *(args or [])],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(url, process, log)
        yield Server(url, process, runs_dir, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def chromium() -> Iterator:
    """A headless system Chromium through playwright's sync API, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def bench_ready() -> bool:
    """Whether a browser bench can run: MNIST_DATA_DIR names the data (else it says so)."""
    if os.environ.get("MNIST_DATA_DIR"):
        return True
    print("set MNIST_DATA_DIR to the folder holding MNIST's four IDX files")
    return False


def visitor_cookie(server: Server, name: str) -> dict:
    """A browser cookie naming a visitor who gave `name` on this server before (claimed in its
    store), for a browser context's add_cookies: a returning student, without typing."""
    from mnist_core.service.access import claim_name, new_token
    from mnist_core.service.store import RunStore

    token = new_token()
    claim_name(RunStore(server.runs_dir), name, token)
    return {"name": "mnist_visitor", "value": token, "url": server.url}
