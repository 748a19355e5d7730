"""Faults: a training process killed outright, a run that diverges, data shared by sessions.

SIGKILL is the hard case: no `finally`, no atexit, no signal handler runs. Whatever the store
holds then must be a consistent database, finished runs must stay usable, and the run that was
training must be recognisable as interrupted by the next process, and trainable again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mnist_core.service.access import Person
from mnist_core.settings import Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.engine.data import load_mnist
from mnist_core.engine.evaluate import predict_proba
from mnist_core.service.job_queue import JobQueue
from mnist_core.service.lifecycle import pid_alive, recover, run_id_for
from mnist_core.service.jobs import submit
from mnist_core.service.results import load_run_model
from mnist_core.service.store import RunStore
from tests.conftest import ROOT
from tests.synthetic import synthetic_mnist

# Children train with one thread: a second one only spins against this test process for the
# machine's cores, and makes the whole file slower on a shared runner.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SHORT = TrainConfig(model="linear", epochs=1, batch_size=100)
LONG = TrainConfig(model="mlp", epochs=50, batch_size=8)  # minutes of work: killed long before the end

# The dashboard's server process in miniature: one queue with its warm worker, a finished run,
# then a long one.
SERVER = f"""
import sys, time
from mnist_core.service.access import Person
from mnist_core.settings import Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.service.job_queue import JobQueue
from mnist_core.service.store import RunStore

queue = JobQueue(RunStore(sys.argv[1]), Limits(max_concurrent=1), data="tests.synthetic:synthetic_mnist")
queue.submit(TrainConfig(**{SHORT.to_dict()!r}), Person("alice"))
queue.submit(TrainConfig(**{LONG.to_dict()!r}), Person("alice"))
while True:  # until the test kills this process
    time.sleep(1)
"""

# A second server process for the race test: submits the same configs at the same instants.
RACER = """
import json, sys, time
from mnist_core.service.access import Person
from mnist_core.settings import Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.service.job_queue import JobQueue
from mnist_core.service.store import RunStore

queue = JobQueue(RunStore(sys.argv[1]), Limits(max_concurrent=1, max_queued_per_person=100),
                 data="tests.synthetic:synthetic_mnist")
start = float(sys.argv[2])
outcomes = []
for seed in range(int(sys.argv[3])):
    time.sleep(max(0.0, start + 0.15 * seed - time.time()))
    try:
        outcomes.append(queue.submit(TrainConfig(model="linear", seed=seed, batch_size=100), Person("class")).outcome)
    except Exception as error:
        outcomes.append(f"{type(error).__name__}: {error}")
print(json.dumps(outcomes), flush=True)
while True:  # keep the workers until the test has seen every run end
    time.sleep(1)
"""


@dataclass
class Child:
    process: subprocess.Popen
    log: Path  # its stderr (a file, not a pipe: a full pipe would stall the child's training)

    @property
    def pid(self) -> int:
        return self.process.pid


def wait_until(condition: Callable[[], bool], child: Child, what: str, timeout: float = 60.0) -> None:
    """Poll `condition`; fail early, with the child's stderr, if the child dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if child.process.poll() is not None:
            code = child.process.returncode
            raise AssertionError(f"the child exited ({code}) before {what}:\n{child.log.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{child.log.read_text()}")


def is_training(store: RunStore, run_id: str) -> bool:
    record = store.get_run(run_id)
    return record is not None and record.status == "running" and bool(store.steps(run_id))


def kill(child: Child) -> None:
    """SIGKILL, then reap it: an unreaped child is a zombie, and a zombie's pid still looks alive."""
    os.kill(child.pid, signal.SIGKILL)
    child.process.wait(timeout=10)
    assert child.process.returncode == -signal.SIGKILL


def integrity(root: Path) -> str:
    conn = sqlite3.connect(root / "runs.db")
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture()
def spawn(tmp_path):
    """Start child processes (cwd = repo root) that are always killed and reaped, even when
    the test fails."""
    children: list[Child] = []

    def start(args: list[str], stdout: bool = False) -> Child:
        log = tmp_path / f"child-{len(children)}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(args, cwd=ROOT, env=CHILD_ENV, stderr=stderr, text=True,
                                       stdout=subprocess.PIPE if stdout else subprocess.DEVNULL)
        children.append(Child(process, log))
        return children[-1]

    yield start
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
        child.process.wait(timeout=10)


def test_sigkill_of_the_server_interrupts_its_run_and_keeps_the_store(tmp_path, spawn):
    root = tmp_path / "runs"
    short_id, long_id = run_id_for(SHORT), run_id_for(LONG)
    server = spawn([sys.executable, "-c", SERVER, str(root)])
    wait_until(lambda: root.joinpath("runs.db").exists(), server, "the store exists")
    store = RunStore(root)
    wait_until(lambda: is_training(store, long_id), server, "the long run trains")
    assert store.get_run(short_id).status == "finished"
    worker = store.get_run(long_id).worker_pid
    kill(server)

    assert integrity(root) == "ok"
    # The orphaned worker notices its server is gone, ends the run as interrupted and exits.
    deadline = time.monotonic() + 30
    while store.get_run(long_id).status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    interrupted = store.get_run(long_id)
    assert interrupted.status == "interrupted" and "launch it again" in interrupted.message
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(worker), "the worker outlived its server"
    steps_before = len(store.steps(long_id))
    assert steps_before >= 1  # its history up to the kill is kept

    # The finished run survived intact: its weights reproduce its stored test predictions.
    data = synthetic_mnist()
    model = load_run_model(store, short_id)
    stored = store.load_tensors(short_id, "evaluation")["probabilities"]
    fresh = predict_proba(model, data.test_images)
    assert torch.allclose(fresh, stored.to(fresh.dtype), atol=1e-5)

    # The next server trains the interrupted run afresh and reuses the finished one.
    again = submit(store, LONG, "alice", Limits())
    assert (again.run_id, again.outcome) == (long_id, "queued")
    record = store.get_run(long_id)
    assert record.status == "queued" and record.message == "" and record.epochs_done == 0
    assert store.steps(long_id) == []  # trained afresh, not appended to the old curve
    assert submit(store, SHORT, "alice", Limits()).outcome == "cached"
    store.request_stop(long_id)


def test_sigkill_of_a_warm_worker_mid_run_interrupts_it_and_a_new_worker_takes_over(tmp_path):
    store = RunStore(tmp_path / "runs")
    queue = JobQueue(store, Limits(max_concurrent=1), data="tests.synthetic:synthetic_mnist")
    try:
        long_id = queue.submit(LONG, Person("alice")).run_id
        deadline = time.monotonic() + 60
        while not is_training(store, long_id):
            assert time.monotonic() < deadline, store.get_run(long_id)
            time.sleep(0.05)
        worker = store.get_run(long_id).worker_pid
        assert worker in queue.pool.pids()
        os.kill(worker, signal.SIGKILL)
        while store.get_run(long_id).status == "running":
            assert time.monotonic() < deadline, "the dead worker's run was never recovered"
            time.sleep(0.05)
        record = store.get_run(long_id)
        assert record.status == "interrupted" and "stopped unexpectedly" in record.message, record
        # The store may recover the run (read-time check of the dead pid) before the pool's
        # monitor, which polls every 0.5 s, has swapped in the replacement: wait for it.
        while worker in queue.pool.pids():
            assert time.monotonic() < deadline, "the killed worker was never replaced"
            time.sleep(0.05)
        short = queue.submit(SHORT, Person("bob"))
        while store.get_run(short.run_id).status in ("queued", "running"):
            assert time.monotonic() < deadline + 30, store.get_run(short.run_id)
            time.sleep(0.05)
        assert store.get_run(short.run_id).status == "finished"
    finally:
        queue.shutdown()


def test_two_servers_submitting_the_same_configs_at_once_train_each_once(tmp_path, spawn):
    """Two server processes share one store; each submits the same 12 configs at the same
    instants. Every config is queued by exactly one of them, joined or reused by the other,
    trained once, and neither sees an error."""
    import json

    root, count = tmp_path / "runs", 12
    RunStore(root)
    start = time.time() + 15  # both processes and their workers are up by then
    servers = [spawn([sys.executable, "-c", RACER, str(root), str(start), str(count)], stdout=True) for _ in range(2)]
    outcomes = [json.loads(server.process.stdout.readline()) for server in servers]
    assert all(len(o) == count for o in outcomes), outcomes
    store = RunStore(root)
    for seed, pair in enumerate(zip(*outcomes)):
        assert sorted(pair) in (["joined", "queued"], ["cached", "queued"]), (seed, pair)
    ids = [run_id_for(TrainConfig(model="linear", seed=seed, batch_size=100)) for seed in range(count)]
    deadline = time.monotonic() + 120
    while any(store.get_run(i).status in ("queued", "running") for i in ids):
        assert time.monotonic() < deadline, [store.get_run(i).status for i in ids]
        time.sleep(0.1)
    for run_id in ids:
        record = store.get_run(run_id)
        steps = [row["step"] for row in store.steps(run_id)]
        assert record.status == "finished" and steps == sorted(set(steps)) and steps[-1] == 6, (record, steps)


@pytest.mark.skipif(not os.environ.get("MNIST_DATA_DIR"), reason="MNIST_DATA_DIR is not set")
def test_killed_cli_training_is_interrupted_only_once_its_process_is_dead(tmp_path, spawn):
    root = tmp_path / "runs"
    run_id = run_id_for(LONG)
    cli = [sys.executable, "-m", "mnist_core", "--runs-dir", str(root)]
    trainer = spawn(cli + ["train", "--model", "mlp", "--epochs", "50", "--batch-size", "8"])
    wait_until(lambda: root.joinpath("runs.db").exists(), trainer, "the store exists")
    store = RunStore(root)
    wait_until(lambda: is_training(store, run_id), trainer, "the CLI trains")
    assert store.get_run(run_id).worker_pid == trainer.pid

    # Another process starting up (a dashboard, another CLI) must not steal a live run.
    assert recover(store) == 0
    assert store.get_run(run_id).status == "running"

    kill(trainer)
    assert integrity(root) == "ok"
    assert recover(store) == 1  # now its recorded pid is dead
    record = store.get_run(run_id)
    assert record.status == "interrupted" and record.message
    listing = subprocess.run(cli + ["runs"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert listing.returncode == 0
    assert any(line.split()[:2] == [run_id, "interrupted"] for line in listing.stdout.splitlines()), listing.stdout


@pytest.mark.skipif(not os.environ.get("MNIST_DATA_DIR"), reason="MNIST_DATA_DIR is not set")
def test_cli_diverging_run_ends_cleanly_with_advice(tmp_path):
    root = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "mnist_core", "--runs-dir", str(root), "train", "--model", "mlp",
         "--epochs", "2", "--lr", "10", "--optimizer", "sgd"],
        capture_output=True, text=True, cwd=ROOT, env=CHILD_ENV, timeout=120,
    )
    assert result.returncode != 0
    assert "status: diverged" in result.stdout and "Lower the learning rate" in result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    config = TrainConfig(model="mlp", epochs=2, lr=10.0, optimizer="sgd")
    record = RunStore(root).get_run(run_id_for(config))
    assert record.status == "diverged" and "Lower the learning rate" in record.message
    assert not RunStore(root).has_tensors(record.id, "weights")  # no model is offered from it


def test_data_is_loaded_once_per_process(mnist, monkeypatch):
    """Every dashboard session asks for the data; all must get the same ~55 MB copy."""
    first = load_mnist(allow_download=False)
    assert load_mnist(allow_download=False) is first
    monkeypatch.setenv("MNIST_DATA_DIR", os.environ["MNIST_DATA_DIR"].rstrip("/") + "/./")
    assert load_mnist(allow_download=False) is first  # the same folder spelled differently
