"""A run's life (mnist_core/service/jobs.py) through the same warm worker processes production uses.

One queue (one worker process, synthetic data, a trainer that crashes on demand) serves the
whole module, as one server's queue serves every session.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from mnist_core.service.access import Person
from mnist_core.settings import ConfigError, Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.service.lifecycle import HOST, current, recover, run_id_for
from mnist_core.service.job_queue import JobQueue
from mnist_core.service.jobs import execute, first_step_soon, submit
from mnist_core.service.waiting import waiting_line
from mnist_core.service.results import load_run_model
from mnist_core.service.store import RunStore
from tests.conftest import ROOT
from tests.synthetic import FAILING_SEED

ENDED = ("finished", "diverged", "cancelled", "failed", "interrupted")
SLOW = TrainConfig(model="mlp", epochs=40, batch_size=4)  # tens of seconds on synthetic data


def wait_for(store, run_id, statuses=ENDED, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get_run(run_id)
        if record and record.status in statuses:
            return record
        time.sleep(0.02)
    raise AssertionError(f"{run_id} did not reach {statuses}: {store.get_run(run_id)}")


def wait_for_steps(store, run_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not store.steps(run_id):
        assert time.monotonic() < deadline, f"{run_id} never reported a step: {store.get_run(run_id)}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return RunStore(tmp_path_factory.mktemp("jobs") / "runs")


@pytest.fixture(scope="module")
def queue(store):
    q = JobQueue(store, Limits(max_concurrent=1, max_queued_per_person=3),
                 data="tests.synthetic:synthetic_mnist", train="tests.synthetic:train_or_crash")
    yield q
    q.shutdown()


@pytest.fixture(autouse=True)
def idle_queue(request, store):
    """Each test starts with nothing queued or running (a failed test's leftovers stopped)."""
    yield
    for record in store.list_runs(("queued", "running")):
        store.request_stop(record.id)
        wait_for(store, record.id)


def test_a_changed_model_gets_new_run_ids_so_a_launch_never_finds_a_run_of_its_earlier_network():
    best, linear = TrainConfig(model="cnn-best"), TrainConfig(model="linear")
    assert run_id_for(linear) == f"linear-{linear.config_hash()}"  # unchanged models: stored runs keep their ids
    assert re.fullmatch(r"cnn-best-[0-9a-f]{12}", run_id_for(best))
    assert run_id_for(best) != f"cnn-best-{best.config_hash()}"
    assert run_id_for(best) == run_id_for(TrainConfig(model="cnn-best")) != run_id_for(best.replace(seed=1))


def test_a_submitted_run_trains_in_a_worker_process_and_is_stored(queue, store):
    config = TrainConfig(model="linear", epochs=2, batch_size=100)
    submission = queue.submit(config, Person("alice"))
    assert submission.outcome == "queued" and submission.run_id == run_id_for(config)
    record = wait_for(store, submission.run_id)
    assert record.status == "finished" and record.test_accuracy > 0.9 and record.epochs_done == 2
    assert record.owner == "alice" and record.worker_pid in queue.pool.pids() and record.worker_pid != os.getpid()
    assert [e["epoch"] for e in store.epochs(record.id)] == [1, 2]
    steps = store.steps(record.id)
    assert steps and all(row["total"] == 12 for row in steps) and steps[-1]["step"] == 12  # 540 / 100 = 6 per epoch
    assert store.has_tensors(record.id, "weights") and store.has_tensors(record.id, "evaluation")
    assert queue.submit(config, Person("bob")).outcome == "cached"


def test_identical_configs_share_one_run_and_the_line_follows_the_clicks(queue, store):
    first = queue.submit(SLOW, Person("alice"))
    wait_for(store, first.run_id, ("running",))
    b = queue.submit(TrainConfig(model="linear", seed=31), Person("bob"))
    c = queue.submit(TrainConfig(model="linear", seed=32), Person("carol"))
    assert queue.submit(SLOW, Person("bob")).outcome == "joined"
    assert [(w.run_id, w.owner, w.position) for w in queue.waiting()] == [(b.run_id, "bob", 1), (c.run_id, "carol", 2)]
    assert queue.position(c.run_id) == 2 and queue.position(first.run_id) is None
    assert queue.cancel(first.run_id, Person("alice"))  # a stop request through the store reaches the worker process
    assert wait_for(store, first.run_id).status == "cancelled"
    assert wait_for(store, b.run_id).status == "finished" and wait_for(store, c.run_id).status == "finished"
    assert store.get_run(b.run_id).started <= store.get_run(c.run_id).started


def test_cancelling_a_queued_run_ends_it_before_it_starts(queue, store):
    blocker = queue.submit(SLOW.replace(seed=1), Person("alice"))
    waiting = queue.submit(TrainConfig(model="linear", epochs=1, seed=5), Person("alice"))
    assert queue.cancel(waiting.run_id, Person("alice"))
    assert store.get_run(waiting.run_id).status == "cancelled"
    queue.cancel(blocker.run_id, Person("alice"))
    wait_for(store, blocker.run_id)
    assert store.steps(waiting.run_id) == [] and store.get_run(waiting.run_id).started is None
    assert not queue.cancel(waiting.run_id, Person("alice"))  # already ended


def test_a_diverging_run_ends_as_diverged_and_the_worker_goes_on(queue, store):
    bad = queue.submit(TrainConfig(model="mlp", epochs=2, lr=10.0, optimizer="sgd"), Person("alice"))
    good = queue.submit(TrainConfig(model="linear", epochs=1, seed=3), Person("alice"))
    record = wait_for(store, bad.run_id)
    assert record.status == "diverged" and "Lower the learning rate" in record.message
    assert wait_for(store, good.run_id).status == "finished"


def test_a_crash_inside_training_marks_the_run_failed_and_the_worker_goes_on(queue, store):
    crashed = queue.submit(TrainConfig(model="linear", seed=FAILING_SEED), Person("alice"))
    after = queue.submit(TrainConfig(model="linear", seed=33), Person("alice"))
    record = wait_for(store, crashed.run_id)
    assert record.status == "failed" and "disk gone" in record.message
    assert wait_for(store, after.run_id).status == "finished"


def test_a_run_active_in_another_live_process_is_joined_not_reset(queue, store):
    config = TrainConfig(model="linear", seed=21)
    run_id = run_id_for(config)
    assert store.enqueue(run_id, config.to_dict(), "cli", worker=(os.getppid(), HOST)) == "queued"  # a live process
    assert queue.submit(config, Person("alice")).outcome == "joined"
    assert store.get_run(run_id).status == "running"
    store.transition(run_id, "cancelled", only_from=["running"])


def test_the_waiting_limit_is_per_person_not_per_tab(queue, store):
    """Limits are enforced where the queue lives: every tab of one person draws on one limit."""
    blocker = queue.submit(SLOW.replace(seed=2), Person("x"))
    wait_for(store, blocker.run_id, ("running",))  # the one worker is busy: the rest wait
    limits = Limits(max_queued_per_person=2)
    waiting = [submit(store, TrainConfig(model="linear", seed=seed), "dana", limits) for seed in (41, 42)]
    with pytest.raises(ConfigError, match="already have 2 runs waiting"):
        submit(store, TrainConfig(model="linear", seed=43), "dana", limits)
    assert submit(store, TrainConfig(model="linear", seed=43), "erin", limits).outcome == "queued"
    assert [w.owner for w in queue.waiting()] == ["dana", "erin", "dana"]  # people take turns
    for run_id in [w.run_id for w in waiting] + [run_id_for(TrainConfig(model="linear", seed=43))]:
        assert queue.cancel(run_id, Person("teacher", teacher=True))


def test_read_only_deployment_refuses_training(store):
    with pytest.raises(ConfigError, match="read-only"):
        submit(store, TrainConfig(model="linear"), "alice", Limits(read_only=True))


def test_a_run_whose_process_died_is_recovered_when_read_or_joined(queue, store):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    read, joined = TrainConfig(model="linear", seed=51), TrainConfig(model="linear", seed=52)
    for config in (read, joined):
        store.enqueue(run_id_for(config), config.to_dict(), "alice", worker=(dead, HOST))
    store.enqueue("elsewhere", read.to_dict(), "bob", worker=(dead, "another-host"))
    assert current(store, run_id_for(read)).status == "interrupted"  # reading it is enough
    again = queue.submit(joined, Person("bob"))  # trained again, not joined: nobody trains the old one
    assert again.outcome == "queued" and store.get_run(again.run_id).owner == "bob"
    assert wait_for(store, again.run_id).status == "finished"
    assert store.get_run("elsewhere").status == "running"  # another machine's process: not ours to judge
    assert recover(store) == 0
    store.transition("elsewhere", "cancelled")


def test_estimated_starts_follow_measured_speed_and_the_work_ahead(store):
    fresh = RunStore(store.root.parent / "estimates")
    # A finished linear run measured 0.001 s per training image (540 batches of 100 in 54 s), so
    # the pool holds 60,000 images (54,000 after its validation split of 0.1).
    fresh.enqueue("done", TrainConfig(model="linear", seed=60, batch_size=100).to_dict(), "x")
    fresh.claim_next(os.getpid(), HOST)
    fresh.update_run("done", duration_s=54.0, epochs_done=1, summary={"images_per_s": 1000.0, "steps": 540})
    fresh.transition("done", "finished")
    # One running linear run halfway through (10 s so far), then three waiting: 1, 2 and 1 epochs.
    fresh.enqueue("now", TrainConfig(model="linear", seed=61).to_dict(), "x")
    fresh.claim_next(os.getpid(), HOST)
    fresh.add_steps("now", [{"step": 50, "epoch": 1, "elapsed": 10.0, "total": 100}])
    for name, epochs in (("w1", 1), ("w2", 2), ("w3", 1)):
        fresh.enqueue(name, TrainConfig(model="linear", epochs=epochs, seed=62).to_dict(), name)
    line = waiting_line(fresh)
    assert [(w.run_id, w.position) for w in line] == [("w1", 1), ("w2", 2), ("w3", 3)]
    assert [round(w.start_in_s) for w in line] == [10, 64, 172]
    assert [round(w.start_in_s) for w in waiting_line(fresh, trainers=2)] == [0, 10, 54]


def test_first_step_soon_waits_for_a_claimed_run_but_not_behind_others(store):
    """The page that launched a run waits briefly for its first step; a run that waits in line,
    or has ended, or takes longer, does not hold the page."""
    import threading

    fresh = RunStore(store.root.parent / "first-step")
    fresh.enqueue("waiting", TrainConfig(model="linear", seed=70).to_dict(), "x")  # no trainer takes it
    start = time.monotonic()
    assert first_step_soon(fresh, "waiting", timeout_s=30.0, claim_s=0.1) is None
    assert time.monotonic() - start < 15.0  # it gave up because the run waits, not at the timeout

    fresh.enqueue("claimed", TrainConfig(model="linear", seed=71).to_dict(), "x")
    assert fresh.claim("claimed", os.getpid(), HOST)
    step = {"step": 1, "epoch": 1, "elapsed": 0.01, "total": 100}
    later = threading.Timer(0.3, fresh.add_steps, args=("claimed", [step]))
    later.start()
    found = first_step_soon(fresh, "claimed", timeout_s=30.0)
    later.join()
    assert found is not None and found["step"] == 1 and found["total"] == 100

    fresh.enqueue("slow", TrainConfig(model="linear", seed=72).to_dict(), "x")
    assert fresh.claim("slow", os.getpid(), HOST)
    assert first_step_soon(fresh, "slow", timeout_s=0.2) is None  # no step yet: the page goes on
    fresh.transition("slow", "cancelled")
    start = time.monotonic()
    assert first_step_soon(fresh, "slow", timeout_s=30.0) is None  # ended: nothing to wait for
    assert time.monotonic() - start < 15.0
    assert first_step_soon(fresh, "no-such-run") is None


def test_real_linear_run_beats_90_percent_and_is_reused(mnist, tmp_path):
    store = RunStore(tmp_path / "runs")
    config = TrainConfig(model="linear", epochs=1, batch_size=128, lr=1e-3)
    submission = submit(store, config, "cli", Limits(), worker=(os.getpid(), HOST))
    assert execute(store, submission.run_id, config, mnist) == "finished"
    run_id = submission.run_id
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


def test_estimated_starts_of_three_waiting_runs_are_within_2x_of_the_actual_starts(queue, store):
    """The line's estimates come from a finished run's measured pace and the work ahead."""
    calibration = queue.submit(TrainConfig(model="mlp", epochs=3, batch_size=4, seed=500), Person("cal"))
    assert wait_for(store, calibration.run_id).status == "finished"
    running = queue.submit(TrainConfig(model="mlp", epochs=4, batch_size=4, seed=501), Person("ada")).run_id
    deadline = time.monotonic() + 60
    while store.get_run(running).status == "queued":  # the worker is free only once the last run is stored
        assert time.monotonic() < deadline, "the worker never claimed the run"
        time.sleep(0.05)
    waiting = [queue.submit(TrainConfig(model="mlp", epochs=epochs, batch_size=4, seed=502 + i), Person(name)).run_id
               for i, (epochs, name) in enumerate(((2, "bea"), (3, "cy"), (2, "di")))]
    submitted = time.time()
    estimates = {w.run_id: w.start_in_s for w in queue.waiting()}
    # Three people never served before: their turns go in click order.
    assert [w.owner for w in queue.waiting()] == ["bea", "cy", "di"]
    pairs = []
    for run_id in waiting:
        record = wait_for(store, run_id, timeout=120)
        assert record.status == "finished", record.message
        pairs.append((estimates[run_id], record.started - submitted))
    print("estimated vs actual start (s):", ", ".join(f"{e:.1f} vs {a:.1f}" for e, a in pairs))
    for estimate, actual in pairs:
        assert estimate is not None and actual / 2 <= estimate <= actual * 2, pairs
