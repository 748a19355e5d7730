"""Warm training processes: started once per server, ready before anyone presses Launch.

A worker imports torch, runs every model and optimizer once (torch.optim's lazy imports and
the first-call kernel set-up happen here, not in a visitor's run), maps one shared normalised
copy of MNIST, then claims queued runs from the store and trains them one after another.

Why processes: a web server drawing pages for a class holds Python's GIL most of the time, and
a training thread inside it would crawl. Why `python -m mnist_core.service.trainer` (service/trainer.py) and not
multiprocessing: a spawn/forkserver child re-imports `__main__`, which under Streamlit is
app.py; a plain interpreter imports only this package.

Threads: on a small machine a training process shares its cores with the web server and the
browsers' polls. OpenMP's default spin-waiting then collapses throughput (reported: 10x slower
with 2 threads while one other process was busy), so workers (and the server) run with
OMP_WAIT_POLICY=PASSIVE: a waiting thread sleeps instead of spinning. Measured (cnn-small, 2
threads, AVX2 fp32): it costs a fifth alone (7,500 against 9,400 images/s) and is 2.7x faster
beside one busy core (6,200 against 2,300); a short spin (GOMP_SPINCOUNT=10000) kept the speed
alone but collapsed like the default beside the busy core. A spin of 1000 sat between the two,
but beside a live class (8 tabs polling) its threads took the web server's time: 3.3 polls
answered a second instead of 4.0, 0.79x of its solo speed against PASSIVE's 0.89x. A server
always has other work, so passive it is (and since a batch of a model without active dropout
trains as one slice per core, cpu_speed.BatchParts, such models lose little or nothing to it).
With that, every core for the workers measured best on the 2-core machine, alone and with 8
tabs polling (cnn-small: 3,193 and 2,134 images/s with 2 threads against 2,378 and 1,421 with
1), so the default is the machine's cores split between the workers (`MNIST_TRAIN_THREADS`
overrides). Workers run at the server's priority by default: at nice 10 the first drawn step
came sooner, but 8 polling tabs on the same machine left training 0.06x of its speed
(`MNIST_TRAIN_NICE`). See the README.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mnist_core import settings
from mnist_core.service.lifecycle import recover
from mnist_core.service.store import RunStore
from mnist_core.service.trainer import DEFAULT_DATA, DEFAULT_TRAIN

ROOT = Path(__file__).resolve().parents[2]


class WorkerPool:
    """`count` worker processes for one run store, restarted when one dies.

    A worker that dies mid-run (killed, out of memory) leaves its run running in the store;
    the pool's monitor sees the exit, marks that run interrupted and starts a replacement.
    """

    def __init__(self, runs_root: Path, count: int, data: str | None = None, train: str | None = None,
                 threads: int | None = None):
        self.runs_root = Path(runs_root)
        self.count = max(1, count)
        self.data = data or DEFAULT_DATA
        self.train = train or DEFAULT_TRAIN
        self.threads = threads or settings.train_threads(self.count)
        self.nice = settings.train_nice()
        self.shared_dir = Path(tempfile.mkdtemp(prefix="mnist-workers-"))  # the shared data copy
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.processes: list[subprocess.Popen] = [self._start() for _ in range(self.count)]
        self._monitor = threading.Thread(target=self._watch, name="mnist-worker-monitor", daemon=True)
        self._monitor.start()
        atexit.register(self.shutdown)

    def _start(self) -> subprocess.Popen:
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": str(self.threads)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return subprocess.Popen(
            [sys.executable, "-m", "mnist_core.service.trainer", "--runs-dir", str(self.runs_root), "--data", self.data,
             "--train", self.train, "--threads", str(self.threads), "--shared-dir", str(self.shared_dir),
             "--nice", str(self.nice), "--parent", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT, env=env,
        )

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.processes]

    def ready(self) -> int:
        """How many workers are warm (torch, models and data loaded) and waiting for runs."""
        return sum((self.shared_dir / f"ready-{pid}").exists() for pid in self.pids())

    def wake(self) -> None:
        """Tell idle workers a run is waiting (they would find it within POLL_S anyway)."""
        with self._lock:
            for process in self.processes:
                try:
                    process.stdin.write(b"\n")
                    process.stdin.flush()
                except (BrokenPipeError, OSError, ValueError):
                    pass  # dead or closing: the monitor replaces it

    def _watch(self) -> None:
        store = RunStore(self.runs_root)
        while not self._closing.wait(0.5):
            with self._lock:
                dead = [(i, p) for i, p in enumerate(self.processes) if p.poll() is not None]
            for index, process in dead:
                if self._closing.is_set():
                    return
                # Reaped now (poll), so its pid no longer looks alive: recover its run.
                recover(store, message=f"The training process stopped unexpectedly (exit code "
                                       f"{process.returncode}); launch the run again.")
                replacement = self._start()
                with self._lock:
                    self.processes[index] = replacement

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every worker: a run in training ends as interrupted. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        with self._lock:
            processes = list(self.processes)
        for process in processes:
            try:
                process.stdin.close()
            except OSError:
                pass
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(self.shared_dir, ignore_errors=True)
