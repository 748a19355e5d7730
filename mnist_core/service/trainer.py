"""Inside a warm worker process (python -m mnist_core.service.trainer): warm up, map MNIST,
then claim queued runs from the store and train them one after another.

The same loop (`serve`) runs in the local worker processes that service/workers.py starts and
in the Ray actors of service/cluster.py, so a run trains the same way wherever it trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import os
import select
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_core.speed import seam as speed
from mnist_core.engine.config import OPTIMIZERS, TrainConfig
from mnist_core.engine.data import DataError, load_mnist, normalise
from mnist_core.engine.models import MODELS, build_model, is_convolutional
from mnist_core.engine.train import make_optimizer, make_scheduler
from mnist_core.service.jobs import StopSignal, execute
from mnist_core.service.lifecycle import HOST
from mnist_core.service.store import RunStore
from mnist_core.settings import ConfigError

DEFAULT_DATA = "mnist_core.service.trainer:local_mnist"
DEFAULT_TRAIN = "mnist_core.engine.train:train"
POLL_S = 0.5  # an idle worker looks at the store this often, and at once when woken



def resolve(spec: str):
    """'package.module:function' -> the function."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def local_mnist():
    """The dashboard's data: MNIST from MNIST_DATA_DIR or the local cache, never downloaded here."""
    return load_mnist(allow_download=False)


def warm_up() -> None:
    """Probe the speed wing's private paths (speed.warm_up), then run every model and optimizer
    once on a tiny batch, so a visitor's first run pays none of torch's first-use costs. Each
    optimizer updates as training updates it (speed.update_for), so once this machine has probed
    its torch the worker never imports torch._dynamo (1.1-1.3 s and 156 MB), which only
    `optimizer.step()` would."""
    speed.warm_up()
    x, y = torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
    cpu = torch.device("cpu")
    for name in MODELS:
        for optimizer_name in OPTIMIZERS if name == "linear" else ("adam",):
            config = TrainConfig(model="linear" if optimizer_name == "scratch-sgd" else name,
                                 optimizer=optimizer_name, schedule="onecycle")
            model = build_model(name)  # laid out as start_session lays it out (compiled layers built now)
            fast = speed.for_training(model, cpu, is_convolutional(model), lambda p, c=config: make_optimizer(c, p))
            x_in = x.contiguous(memory_format=torch.channels_last) if fast.channels_last else x
            make_scheduler(config, fast.optimizer, 10)
            F.cross_entropy(fast.model(x_in), y).backward()
            if fast.update is not None:
                fast.update()
            if fast.parts is not None:
                fast.parts.close()
            fast.model.zero_grad(set_to_none=True)
            with torch.inference_mode():
                fast.model.eval()(x_in)


def data_digest(data) -> str:
    digest = hashlib.blake2b(digest_size=12)
    digest.update(data.dataset.encode())  # its normalisation depends on the dataset's statistics
    for tensor in (data.train_images, data.test_images):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def with_shared_normalised(data, folder: Path):
    """`data` with its normalised images mapped from one file that every worker of this pool
    shares (memory-mapped, so the pages exist once however many workers read them)."""
    n_train, n_test = len(data.train_images), len(data.test_images)
    count = (n_train + n_test) * 28 * 28
    path = folder / f"mnist-{data_digest(data)}.f32"
    if not path.exists():  # the first worker writes it; a concurrent writer replaces it atomically
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".mnist-", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            for images in (data.train_images, data.test_images):
                handle.write(normalise(images, data.dataset).numpy().tobytes())
        os.replace(temp, path)
    flat = torch.from_file(str(path), shared=True, size=count, dtype=torch.float32)
    images = flat.view(n_train + n_test, 1, 28, 28)
    return dataclasses.replace(data, normalised=(images[:n_train], images[n_train:]))


def load_data(spec: str, shared_dir: Path):
    """(data, None) or (None, a short reason) when the data cannot be loaded yet."""
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
    worker processes and the Ray actors (mnist_core.service.cluster), so both run a run the same way."""
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
    parser = argparse.ArgumentParser(prog="python -m mnist_core.service.trainer", description="one warm training worker")
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

    torch.set_num_threads(args.threads)

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
