"""Training on a Ray cluster when one machine is not enough (MNIST_RAY_ADDRESS).

The cluster does not get a second queue: Ray actors run the same loop as the local worker
processes (mnist_core.service.trainer.serve), claiming queued runs from the same run store and writing
steps, epochs and weights into it, so pages, live charts, limits and sweeps work unchanged.
Each actor asks for one GPU when the cluster has GPUs, else for CPUs. The run store
(MNIST_RUNS_DIR) and MNIST must be reachable at the same paths on every node (one machine, or a
shared filesystem): the README says how a teacher sets that up.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from pathlib import Path

import torch

from mnist_core import settings
from mnist_core.service.store import RunStore
from mnist_core.service.trainer import DEFAULT_DATA, DEFAULT_TRAIN, DataSource, resolve, serve, warm_up
from mnist_core.service.workers import WorkerPool
from mnist_core.settings import ray_address

LOG = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 3.0
ROOT = Path(__file__).resolve().parents[2]


class ClusterUnavailable(RuntimeError):
    """The cluster named by MNIST_RAY_ADDRESS cannot be used; `public` is safe to show anyone."""

    public = "The training cluster cannot be reached; runs train on this server instead."


def reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether something listens at the address's port (ray.init would wait much longer)."""
    if address == "auto":
        return True  # Ray finds a local cluster itself, and says at once when there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class RayWorker:
    """One warm trainer on a cluster node: the local worker's loop inside a Ray actor."""

    def __init__(self, runs_root: str, data: str, train: str, threads: int):
        torch.set_num_threads(threads)
        warm_up()
        self.store = RunStore(runs_root)
        shared = Path(tempfile.gettempdir()) / f"mnist-ray-{os.getuid()}"
        self.data = DataSource(data, shared)
        self.train = resolve(train)
        self.current: list = []
        self.stopping = threading.Event()
        self.woken = threading.Event()

    def pid(self) -> int:
        return os.getpid()

    def serve(self) -> None:
        serve(self.store, self.data, self.train, self.current, self.stopping, self._wait)

    def _wait(self, timeout: float) -> bool:
        self.woken.wait(timeout)
        self.woken.clear()
        return not self.stopping.is_set()

    def wake(self) -> None:
        self.woken.set()

    def stop(self) -> None:
        """End after the current run; a run in training ends as interrupted, as on shutdown."""
        self.stopping.set()
        self.woken.set()
        for signal_ in list(self.current):
            signal_.shutdown()


class RayPool:
    """Ray actors that train the store's queued runs; the WorkerPool's interface (wake,
    ready, shutdown), so the JobQueue does not care where runs train."""

    backend = "ray"

    def __init__(self, runs_root: Path, address: str, data: str, train: str, workers: int | None = None):
        if not reachable(address):
            raise ClusterUnavailable(f"nothing answers at {address}")
        try:
            import ray  # optional (requirements-cluster.txt): only where a cluster is named
        except ImportError as err:
            raise ClusterUnavailable("the ray package is not installed") from err
        modules = {spec.partition(":")[0].split(".")[0] for spec in (data, train)}
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if os.environ.get("MNIST_DATA_DIR"):
            env["MNIST_DATA_DIR"] = os.environ["MNIST_DATA_DIR"]
        runtime_env: dict = {"env_vars": env}
        if modules <= {"mnist_core"}:  # remote nodes get the package; tests' modules need ROOT
            runtime_env["py_modules"] = [str(ROOT / "mnist_core")]
        try:
            if not ray.is_initialized():
                ray.init(address=address, runtime_env=runtime_env, namespace="mnist-dashboard",
                         logging_level=logging.ERROR, log_to_driver=False)
            resources = ray.cluster_resources()
        except Exception as err:  # ConnectionError, RuntimeError, version mismatch...
            raise ClusterUnavailable(f"{type(err).__name__}: {err}") from err
        self.address = address
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        self.threads = settings.ray_threads()
        if gpus:
            count, options = gpus, {"num_gpus": 1, "num_cpus": 1}
        else:
            count, options = max(1, cpus // self.threads), {"num_cpus": self.threads}
        self.count = min(count, workers or settings.ray_workers(count))
        self.uses_gpus = bool(gpus)
        actor = ray.remote(max_concurrency=4)(RayWorker)  # serve() runs while wake/stop are called
        self.actors = [actor.options(**options).remote(str(runs_root), data, train, self.threads)
                       for _ in range(self.count)]
        self.loops = [a.serve.remote() for a in self.actors]

    def wake(self) -> None:
        for actor in self.actors:
            actor.wake.remote()

    def ready(self, timeout: float = 0.1) -> int:
        """How many actors are warm (constructed) now."""
        import ray  # optional: present, since this pool started

        ready, _ = ray.wait([a.pid.remote() for a in self.actors], num_returns=len(self.actors), timeout=timeout)
        return len(ready)

    def pids(self) -> list[int]:
        import ray  # optional: present, since this pool started

        return ray.get([a.pid.remote() for a in self.actors], timeout=60)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the actors (a run in training ends as interrupted) and leave the cluster."""
        import ray  # optional: present, since this pool started

        if not ray.is_initialized():
            return
        for actor in self.actors:
            actor.stop.remote()
        try:
            ray.wait(self.loops, num_returns=len(self.loops), timeout=timeout)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            ray.shutdown()


def start_pool(runs_root: Path, count: int, data: str | None, train: str | None):
    """Ray actors when MNIST_RAY_ADDRESS names a usable cluster, else local worker processes.
    Returns (pool, problem): `problem` is a short public sentence when the cluster was named but
    could not be used (the operator's log gets the detail), so the dashboard keeps working."""
    address = ray_address()
    if address:
        try:
            return RayPool(runs_root, address, data or DEFAULT_DATA, train or DEFAULT_TRAIN), None
        except ClusterUnavailable as err:
            LOG.warning("MNIST_RAY_ADDRESS=%s cannot be used (%s); training on local workers", address, err)
            return WorkerPool(runs_root, count, data=data, train=train), ClusterUnavailable.public
    return WorkerPool(runs_root, count, data=data, train=train), None
