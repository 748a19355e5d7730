"""Sweep benchmark (`python -m mnist_core.bench --sweep`): a 9-member `linear` sweep
(3 learning rates x 3 batch sizes, 1 epoch) on the local warm workers and through a local Ray
head, the per-run overhead of going through Ray, and the server-side time of a slider move in
the explorer (the Sweeps page run by Streamlit's AppTest, as the server runs it)."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mnist_core.service.access import Person
from mnist_core.settings import Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.service.store import ACTIVE, RunStore
from mnist_core.service.sweeps import SweepPlan

PLAN = SweepPlan(TrainConfig(model="linear", epochs=1), {"lr": [1e-3, 3e-3, 1e-2], "batch_size": [64, 128, 256]})
ROOT = Path(__file__).resolve().parents[2]


def timed_sweep(runs_dir: Path, limits: Limits) -> dict:
    """Start the trainers (local workers, or Ray actors with MNIST_RAY_ADDRESS), wait until they
    are warm, launch the sweep and wait for every member to end."""
    from mnist_core.service.job_queue import JobQueue

    store = RunStore(runs_dir)
    start = time.perf_counter()
    queue = JobQueue(store, limits)
    try:
        count = getattr(queue.pool, "count", 1)
        while queue.pool.ready() < count:
            time.sleep(0.2)
        warm = time.perf_counter() - start
        clicked = time.perf_counter()
        launched = queue.submit_sweep(PLAN, Person("bench"))
        ids = list(launched.outcomes)
        while any(store.get_run(i).status in ACTIVE for i in ids):
            time.sleep(0.05)
        wall = time.perf_counter() - clicked
        records = [store.get_run(i) for i in ids]
        return {"backend": getattr(queue.pool, "backend", "local"), "trainers": count, "warm_s": warm,
                "wall_s": wall, "finished": sum(r.status == "finished" for r in records),
                "training_s": sum(r.duration_s or 0 for r in records)}
    finally:
        queue.shutdown()


def wait_for_warm_workers(timeout: float = 120.0) -> None:
    """Until every worker process this process started has written its ready file."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [p.cmdline() for p in psutil.Process().children() if "mnist_core.service.workers" in p.cmdline()]
        folders = [(Path(c[c.index("--shared-dir") + 1]), c) for c in workers]
        if workers and all(any(f.glob("ready-*")) for f, _ in folders):
            return
        time.sleep(0.5)
    raise TimeoutError("the page's trainers never became ready")


def slider_moves(runs_dir: Path, moves: int = 6) -> list[float]:
    """Seconds the server spends on a slider move: one script run of the Sweeps page."""
    from streamlit.testing.v1 import AppTest

    from mnist_core.service.access import claim_name, new_token

    os.environ["MNIST_RUNS_DIR"] = str(runs_dir)
    store = RunStore(runs_dir)
    (sweep, *_) = store.list_sweeps()
    token = new_token()
    claim_name(store, "bench", token)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["visitor_token"] = token
    at.run()
    at.switch_page("pages/sweeps.py")
    at.run()
    wait_for_warm_workers()  # the page started its own trainers: their warm-up is not a slider's cost
    at.run()
    times = []
    for move in range(moves):
        value = PLAN.axes["batch_size"][(move + 1) % 3]
        start = time.perf_counter()
        at.select_slider(key=f"sweep_{sweep.id}_batch_size").set_value(value).run()
        times.append(time.perf_counter() - start)
        assert not at.exception, [e.value for e in at.exception]
    return times


def main() -> int:
    from mnist_core.bench.ray_head import local_head
    from mnist_core.engine.device import cpu_header

    print(cpu_header())
    print(f"sweep: {PLAN.size()} members of linear, 1 epoch: lr {PLAN.axes['lr']} x batch {PLAN.axes['batch_size']}")
    os.environ.pop("MNIST_RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory() as folder:
        local = timed_sweep(Path(folder) / "local", Limits.from_env())
        times = slider_moves(Path(folder) / "local")
        with local_head(cpus=os.cpu_count() or 2) as address:
            os.environ["MNIST_RAY_ADDRESS"] = address
            try:
                on_ray = timed_sweep(Path(folder) / "ray", Limits.from_env())
            finally:
                os.environ.pop("MNIST_RAY_ADDRESS", None)
        for result in (local, on_ray):
            print(f"  {result['backend']:<5} {result['trainers']} trainer(s): warm-up {result['warm_s']:5.1f} s, "
                  f"sweep {result['wall_s']:5.1f} s from launch to the last member ended "
                  f"({result['finished']}/{PLAN.size()} finished; {result['training_s']:.1f} s of training in all)")
        overhead = (on_ray["wall_s"] * on_ray["trainers"] - on_ray["training_s"]) / PLAN.size()
        local_overhead = (local["wall_s"] * local["trainers"] - local["training_s"]) / PLAN.size()
        print(f"  per-run time outside training: local {local_overhead:.2f} s, Ray {overhead:.2f} s "
              f"(Ray's overhead per run: {overhead - local_overhead:+.2f} s)")
        print(f"  slider move, server side (whole Sweeps page script): median {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms over {len(times)} moves")
        sys.stdout.flush()
    # Ray's driver can abort while the interpreter tears down threads it left behind (seen with
    # ray 2.60): every figure is printed, so leave without the teardown.
    os._exit(0)
