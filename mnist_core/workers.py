"""Warm training processes: started once per server, ready before anyone presses Launch.

A worker imports torch, runs every model and optimizer once (torch.optim's lazy imports and
the first-call kernel set-up happen here, not in a visitor's run), maps one shared normalised
copy of MNIST, then claims queued runs from the store and trains them one after another.

Why processes: a web server drawing pages for a class holds Python's GIL most of the time, and
a training thread inside it would crawl. Why `python -m mnist_core.workers` and not
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

import argparse
import atexit
import hashlib
import importlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mnist_core.config import env_whole

DEFAULT_DATA = "mnist_core.workers:local_mnist"
DEFAULT_TRAIN = "mnist_core.train:train"
POLL_S = 0.5  # an idle worker looks at the store this often, and at once when woken
ROOT = Path(__file__).resolve().parent.parent


def default_threads(workers: int) -> int:
    """Torch threads per worker: MNIST_TRAIN_THREADS, else the machine's cores shared among the
    workers, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return env_whole("MNIST_TRAIN_THREADS", max(1, cores // max(workers, 1)), 1, 1024)


def default_nice() -> int:
    """How much lower than the web server the workers run (MNIST_TRAIN_NICE, 0-19; default 0:
    see the module's docstring for what was measured)."""
    return env_whole("MNIST_TRAIN_NICE", 0, 0, 19)


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
        self.threads = threads or default_threads(self.count)
        self.nice = default_nice()
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
            [sys.executable, "-m", "mnist_core.workers", "--runs-dir", str(self.runs_root), "--data", self.data,
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
        from mnist_core.jobs import recover
        from mnist_core.runs import RunStore

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


# -- inside a worker process ----------------------------------------------------------------


def resolve(spec: str):
    """'package.module:function' -> the function."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def local_mnist():
    """The dashboard's data: MNIST from MNIST_DATA_DIR or the local cache, never downloaded here."""
    from mnist_core.data import load_mnist

    return load_mnist(allow_download=False)


def warm_up() -> None:
    """Run every model and optimizer once on a tiny batch, so a visitor's first run pays none
    of torch's first-use costs. Each optimizer updates as training updates it
    (fused_step.update_for), so the worker never imports torch._dynamo (1.1-1.3 s and 156 MB),
    which only `optimizer.step()` would."""
    import torch
    import torch.nn.functional as F

    import mnist_core.evaluate  # noqa: F401  (scikit-learn's import, once)
    from mnist_core.config import OPTIMIZERS, TrainConfig
    from mnist_core.cpu_speed import for_cpu_training
    from mnist_core.fused_step import update_for
    from mnist_core.models import MODELS, build_model, is_convolutional
    from mnist_core.train import make_optimizer, make_scheduler

    x, y = torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
    for name in MODELS:
        model = build_model(name)
        if is_convolutional(model):  # as start_session lays it out (and the compiled layers are built now)
            model = for_cpu_training(model).to(memory_format=torch.channels_last)
            x_in = x.contiguous(memory_format=torch.channels_last)
        else:
            x_in = x
        for optimizer_name in OPTIMIZERS if name == "linear" else ("adam",):
            config = TrainConfig(model="linear" if optimizer_name == "scratch-sgd" else name,
                                 optimizer=optimizer_name, schedule="onecycle")
            optimizer = make_optimizer(config, list(model.parameters()))
            make_scheduler(config, optimizer, 10)
            F.cross_entropy(model(x_in), y).backward()
            if optimizer is not None:
                update_for(optimizer)()
            model.zero_grad(set_to_none=True)
        with torch.inference_mode():
            model.eval()(x_in)


def data_digest(data) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for tensor in (data.train_images, data.test_images):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def with_shared_normalised(data, folder: Path):
    """`data` with its normalised images mapped from one file that every worker of this pool
    shares (memory-mapped, so the pages exist once however many workers read them)."""
    import dataclasses

    import torch

    from mnist_core.data import normalise

    n_train, n_test = len(data.train_images), len(data.test_images)
    count = (n_train + n_test) * 28 * 28
    path = folder / f"mnist-{data_digest(data)}.f32"
    if not path.exists():  # the first worker writes it; a concurrent writer replaces it atomically
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".mnist-", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            for images in (data.train_images, data.test_images):
                handle.write(normalise(images).numpy().tobytes())
        os.replace(temp, path)
    flat = torch.from_file(str(path), shared=True, size=count, dtype=torch.float32)
    images = flat.view(n_train + n_test, 1, 28, 28)
    return dataclasses.replace(data, normalised=(images[:n_train], images[n_train:]))


def load_data(spec: str, shared_dir: Path):
    """(data, None) or (None, a short reason) when the data cannot be loaded yet."""
    from mnist_core.data import DataError

    try:
        data = resolve(spec)()
    except DataError as err:
        return None, str(err).splitlines()[0]
    shared_dir.mkdir(parents=True, exist_ok=True)
    return with_shared_normalised(data, shared_dir), None


class DataSource:
    """The worker's MNIST, loaded once; retried at the next run while it is missing."""

    def __init__(self, spec: str, shared_dir: Path):
        self.spec, self.shared_dir = spec, shared_dir
        self.data, self.error = load_data(spec, shared_dir)

    def get(self):
        if self.data is None:  # the operator may have installed the files since
            self.data, self.error = load_data(self.spec, self.shared_dir)
        return self.data


def serve(store, data_source: DataSource, train_function, current: list, stopping: threading.Event,
          wait, parent: int | None = None) -> None:
    """Claim queued runs and train them one after another until `stopping` (or the parent
    process is gone). `wait(timeout)` sleeps until woken; False means stop. Shared by the local
    worker processes and the Ray actors (mnist_core.cluster), so both run a run the same way."""
    from mnist_core.config import ConfigError, TrainConfig
    from mnist_core.jobs import HOST, StopSignal, execute

    while not stopping.is_set() and (parent is None or os.getppid() == parent):
        record = store.claim_next(os.getpid(), HOST)
        if record is None:
            if not wait(POLL_S):
                break
            continue
        data = data_source.get()
        if data is None:
            store.transition(record.id, "failed", f"MNIST is not available on the server: {data_source.error}",
                             only_from=["running"])
            continue
        try:
            config = TrainConfig.from_dict(record.config)
        except (ConfigError, TypeError) as err:
            store.transition(record.id, "failed", f"Stored settings are not valid: {err}", only_from=["running"])
            continue
        current[:] = [StopSignal(store, record.id, parent)]
        if stopping.is_set():
            current[0].shutdown()
        execute(store, record.id, config, data, current[0], train_function=train_function)
        current.clear()


def wait_for_wake(timeout: float) -> bool:
    """Sleep until woken through stdin or `timeout`; False when stdin closed (the server is gone)."""
    try:
        ready, _, _ = select.select([sys.stdin.buffer], [], [], timeout)
    except (OSError, ValueError):
        time.sleep(timeout)
        return True
    if ready:
        return bool(os.read(sys.stdin.fileno(), 4096))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_core.workers", description="one warm training worker")
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--train", default=DEFAULT_TRAIN)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shared-dir", required=True)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    if args.nice and hasattr(os, "nice"):
        os.nice(args.nice)

    import torch

    torch.set_num_threads(args.threads)
    from mnist_core.jobs import StopSignal
    from mnist_core.runs import RunStore

    current: list[StopSignal] = []
    stopping = threading.Event()

    def on_terminate(signum, frame) -> None:
        stopping.set()
        for signal_ in current:
            signal_.shutdown()

    signal.signal(signal.SIGTERM, on_terminate)
    warm_up()
    store = RunStore(args.runs_dir)
    shared_dir = Path(args.shared_dir)
    data_source = DataSource(args.data, shared_dir)
    (shared_dir / f"ready-{os.getpid()}").touch()
    serve(store, data_source, resolve(args.train), current, stopping, wait_for_wake, args.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
