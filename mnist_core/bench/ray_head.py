"""A Ray head on loopback for the tests and the sweep bench (`ray start --head`), stopped
afterwards by its own processes only."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mnist_core.bench.serve import free_port


@contextmanager
def local_head(cpus: int = 2) -> Iterator[str]:
    """A Ray head on loopback for tests and the bench (`ray start --head`), yielding its
    address; afterwards only its own processes are stopped (`ray stop` would stop every Ray on
    the machine). Needs psutil (a test dependency)."""
    import shutil
    import subprocess
    import sys

    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    port = free_port()
    temp = tempfile.mkdtemp(prefix="mnist-ray-head-")
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", str(cpus), "--include-dashboard=false", "--temp-dir", temp, "--disable-usage-stats"],
                   check=True, capture_output=True, timeout=180, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_processes_mentioning(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop_processes_mentioning(text: str, timeout: float = 5.0) -> None:
    """Terminate (then kill) every process whose command line contains `text`, with children."""
    import psutil

    mine = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in process.info["cmdline"] or ()):
                mine += [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
    for process in mine:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(mine, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
