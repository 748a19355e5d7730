"""The background job queue and run execution (mnist_core/jobs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mnist_core.config import ConfigError, Limits, TrainConfig
from mnist_core.jobs import JobQueue, execute, recover_interrupted, run_id_for
from mnist_core.predict import load_run_model
from tests.conftest import ROOT
from tests.synthetic import synthetic_mnist

DATA = synthetic_mnist()


def wait_for(store, run_id, statuses=("finished", "diverged", "cancelled", "failed"), timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get_run(run_id)
        if record and record.status in statuses:
            return record
        time.sleep(0.05)
    raise AssertionError(f"{run_id} did not reach {statuses}: {store.get_run(run_id)}")


@pytest.fixture()
def queue(store):
    q = JobQueue(store, lambda: DATA, Limits(max_concurrent=1, max_queued_per_session=3))
    yield q
    q.shutdown()


def test_a_submitted_run_trains_in_the_background_and_is_stored(queue, store):
    config = TrainConfig(model="linear", epochs=2, batch_size=100)
    submission = queue.submit(config, "alice")
    assert submission.outcome == "queued" and submission.run_id == run_id_for(config)
    record = wait_for(store, submission.run_id)
    assert record.status == "finished" and record.test_accuracy > 0.9 and record.epochs_done == 2
    assert [e["epoch"] for e in store.epochs(record.id)] == [1, 2] and store.steps(record.id)
    assert store.has_tensors(record.id, "weights") and store.has_tensors(record.id, "evaluation")
    assert queue.submit(config, "bob").outcome == "cached"


def test_identical_configs_share_one_run_and_queue_positions_show(queue, store):
    slow = TrainConfig(model="mlp", epochs=30, batch_size=8)
    first = queue.submit(slow, "alice")
    wait_for(store, first.run_id, ("running",))
    waiting = queue.submit(TrainConfig(model="linear", epochs=1), "alice")
    assert queue.submit(slow, "bob") == type(first)(first.run_id, "joined")
    assert queue.position(waiting.run_id) == 1
    queue.cancel(first.run_id)
    assert wait_for(store, first.run_id).status == "cancelled"
    assert wait_for(store, waiting.run_id).status == "finished"


def test_cancelling_a_queued_run_ends_it_before_it_starts(queue, store):
    blocker = queue.submit(TrainConfig(model="mlp", epochs=30, batch_size=8), "alice")
    waiting = queue.submit(TrainConfig(model="linear", epochs=1, seed=5), "alice")
    assert queue.cancel(waiting.run_id)
    assert store.get_run(waiting.run_id).status == "cancelled"
    queue.cancel(blocker.run_id)
    wait_for(store, blocker.run_id)
    assert store.steps(waiting.run_id) == [] and store.get_run(waiting.run_id).started is None


def test_a_diverging_run_ends_as_diverged_and_the_worker_goes_on(queue, store):
    bad = queue.submit(TrainConfig(model="mlp", epochs=2, lr=10.0, optimizer="sgd"), "alice")
    good = queue.submit(TrainConfig(model="linear", epochs=1, seed=3), "alice")
    record = wait_for(store, bad.run_id)
    assert record.status == "diverged" and "Lower the learning rate" in record.message
    assert wait_for(store, good.run_id).status == "finished"


def test_a_run_active_in_another_live_process_is_joined_not_reset(queue, store):
    config = TrainConfig(model="linear", seed=21)
    run_id = run_id_for(config)
    store.create_run(run_id, config.to_dict())
    store.set_status(run_id, "running")
    store.update_run(run_id, summary={"pid": os.getppid()})  # a live process owns it
    assert queue.submit(config, "alice").outcome == "joined"
    assert store.get_run(run_id).status == "running" and not queue.is_active(run_id)


def test_per_session_queue_limit(store):
    queue = JobQueue(store, lambda: DATA, Limits(max_concurrent=1, max_queued_per_session=1))
    try:
        queue.submit(TrainConfig(model="mlp", epochs=30, batch_size=8), "alice")
        time.sleep(0.3)  # let the worker take the first one
        queue.submit(TrainConfig(model="linear", seed=1), "alice")
        with pytest.raises(ConfigError, match="already have 1 runs waiting"):
            queue.submit(TrainConfig(model="linear", seed=2), "alice")
        queue.submit(TrainConfig(model="linear", seed=2), "bob")  # others are not blocked
    finally:
        queue.shutdown()


def test_read_only_deployment_refuses_training(store):
    queue = JobQueue(store, lambda: DATA, Limits(read_only=True))
    try:
        with pytest.raises(ConfigError, match="read-only"):
            queue.submit(TrainConfig(model="linear"), "alice")
    finally:
        queue.shutdown()


def test_a_crash_inside_training_marks_the_run_failed(queue, store):
    def broken():
        raise OSError("disk gone")

    queue.load_data = broken
    record = wait_for(store, queue.submit(TrainConfig(model="linear", seed=9), "alice").run_id)
    assert record.status == "failed" and "disk gone" in record.message


def test_runs_left_active_by_a_dead_process_are_marked_interrupted(store):
    store.create_run("orphan", TrainConfig().to_dict())
    store.set_status("orphan", "running")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store.update_run("orphan", summary={"pid": int(dead.stdout)})
    store.create_run("alive", TrainConfig(seed=1).to_dict())
    store.update_run("alive", summary={"pid": os.getppid()})
    assert recover_interrupted(store) == 1
    assert store.get_run("orphan").status == "interrupted"
    assert store.get_run("alive").status == "queued"


def test_real_linear_run_beats_90_percent_and_is_reused(mnist, store):
    config = TrainConfig(model="linear", epochs=1, batch_size=128, lr=1e-3)
    run_id = run_id_for(config)
    store.create_run(run_id, config.to_dict())
    assert execute(store, run_id, config, mnist) == "finished"
    record = store.get_run(run_id)
    steps = store.steps(run_id)
    assert record.test_accuracy > 0.90
    model = load_run_model(store, run_id)
    assert sum(p.numel() for p in model.parameters()) == 7850
    # The CLI, pointed at the same store, reuses the stored run instead of training again.
    out = subprocess.run(
        [sys.executable, "-m", "mnist_core", "--runs-dir", str(store.root), "train", "--model", "linear",
         "--epochs", "1", "--batch-size", "128", "--lr", "0.001"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout
    assert f"cached: identical configuration already trained as run {run_id}" in out
    assert store.steps(run_id) == steps  # not trained again
    assert store.get_run(run_id).finished == record.finished


def test_the_dashboard_mode_trains_each_run_in_its_own_process(mnist, store):
    queue = JobQueue(store, limits=Limits(max_concurrent=1))  # no loader: children load MNIST
    try:
        done = queue.submit(TrainConfig(model="linear", epochs=1, batch_size=256, seed=11), "alice")
        record = wait_for(store, done.run_id, timeout=120)
        assert record.status == "finished" and record.test_accuracy > 0.9
        assert record.summary["pid"] != os.getpid()  # trained elsewhere
        assert store.has_tensors(done.run_id, "weights")

        long = queue.submit(TrainConfig(model="mlp", epochs=50, batch_size=16, seed=12), "alice")
        wait_for(store, long.run_id, ("running",), timeout=120)
        deadline = time.monotonic() + 60
        while not store.steps(long.run_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queue.cancel(long.run_id)  # crosses the process boundary
        assert wait_for(store, long.run_id, timeout=60).status == "cancelled"
    finally:
        queue.shutdown()
