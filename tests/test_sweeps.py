"""Sweeps (mnist_core/service/sweeps.py): values parsed and checked, all-or-nothing launch, reuse of
trained members, stopping, successive halving, and the same sweep on local workers and on a
real local Ray head ending with the same results in the store."""

from __future__ import annotations

import time

import pytest

from mnist_core.service import sweeps
from mnist_core.service.access import ANONYMOUS, NotAllowed, Person
from mnist_core.settings import ConfigError, Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.service.job_queue import JobQueue
from mnist_core.service.jobs import execute
from mnist_core.service.lifecycle import run_id_for
from mnist_core.bench.ray_head import local_head
from mnist_core.engine.naming import run_colour, run_name
from mnist_core.bench.serve import free_port
from mnist_core.service.store import RunStore
from mnist_core.service.sweeps import SweepPlan, check_values, parse_values, should_stop_early
from tests.synthetic import synthetic_mnist

TINY = TrainConfig(model="linear", epochs=1, batch_size=100, val_split=0.0)
ALICE, BOB, TEACHER = Person("alice"), Person("bob"), Person("Ms Lee", teacher=True)
ENDED = ("finished", "diverged", "cancelled", "failed", "interrupted")


def tiny_plan(**axes) -> SweepPlan:
    return SweepPlan(TINY, axes or {"lr": [1e-3, 1e-2], "batch_size": [50, 100]})


def wait_all(store, run_ids, timeout=120.0):
    deadline = time.monotonic() + timeout
    while any(store.get_run(r).status not in ENDED for r in run_ids):
        assert time.monotonic() < deadline, [(r, store.get_run(r).status) for r in run_ids]
        time.sleep(0.1)


def test_values_are_typed_checked_and_deduplicated():
    assert parse_values("lr", "1e-3, 3e-3;1e-2, 0.001") == [0.001, 0.003, 0.01]
    assert parse_values("batch_size", "64,256") == [64, 256]
    assert parse_values("optimizer", "adam, sgd") == ["adam", "sgd"]
    for key, text, word in (("lr", "", "at least one"), ("lr", " , ", "at least one"), ("lr", "fast", "not a number"),
                            ("batch_size", "0", "range"), ("batch_size", "1.5", "whole"), ("lr", "nan", "range"),
                            ("optimizer", "<b>x</b>", "not one of"), ("device", "cpu", "cannot be swept")):
        with pytest.raises(ConfigError, match=word):
            parse_values(key, text)
    with pytest.raises(ConfigError, match="at least one"):
        check_values("seed", [])


def test_grid_random_and_size_limit():
    plan = SweepPlan(TINY, {"lr": [1e-3, 3e-3, 1e-2], "batch_size": [64, 128, 256]})
    members = plan.members(64)
    assert len(members) == 9 and members[0][0] == {"lr": 1e-3, "batch_size": 64}
    assert {m[1].config_hash() for m in members} == {TINY.replace(**p).config_hash() for p, _ in members}
    sampled = SweepPlan(TINY, plan.axes, mode="random", samples=4, sample_seed=3).members(64)
    assert len(sampled) == 4 and len({str(p) for p, _ in sampled}) == 4
    assert sampled == SweepPlan(TINY, plan.axes, mode="random", samples=4, sample_seed=3).members(64)
    with pytest.raises(ConfigError, match="more than this deployment allows"):
        plan.members(8)
    with pytest.raises(ConfigError, match="at least one setting"):
        SweepPlan(TINY, {}).members(64)
    with pytest.raises(ConfigError, match="scratch-sgd.*in the member"):
        SweepPlan(TrainConfig(model="cnn-small"), {"optimizer": ["adam", "scratch-sgd"]}).members(64)


def test_names_say_what_differs_and_colours_are_stable():
    config = TrainConfig(model="cnn-fast", lr=0.003, batch_size=128, seed=1).to_dict()
    assert run_name(config) == "cnn-fast · lr 0.003 · batch 128 · seed 1"
    assert run_name(TrainConfig().to_dict()) == "cnn-small"
    assert run_name(TrainConfig().to_dict(), always=("lr",)) == "cnn-small · lr 0.001"
    assert "momentum" not in run_name(TrainConfig(momentum=0.5).to_dict())
    assert "momentum 0.5" in run_name(TrainConfig(optimizer="sgd", momentum=0.5).to_dict())
    assert run_colour("linear-abc") == run_colour("linear-abc")
    assert len({run_colour(f"run-{i}") for i in range(200)}) > 10


def test_launch_is_all_or_nothing_and_reuses_trained_members(tmp_path):
    store = RunStore(tmp_path / "runs")
    data = synthetic_mnist()
    trained = TINY.replace(lr=1e-3, batch_size=50)
    store.enqueue(run_id_for(trained), trained.to_dict(), "carol")
    assert execute(store, run_id_for(trained), trained, data) == "finished"
    limits = Limits(max_queued_total=5)
    launched = sweeps.launch(store, tiny_plan(), ALICE, limits, name="lr and batch")
    assert launched.outcomes[run_id_for(trained)] == "cached" and launched.queued == 3
    state = sweeps.state(store, launched.sweep_id)
    assert state.total == 4 and state.finished == 1 and state.sweep.name == "lr and batch"
    assert state.best().params == {"lr": 1e-3, "batch_size": 50}
    # Limits: one sweep in progress per person; the server's queue; nothing queued half-way.
    before = len(store.waiting())
    with pytest.raises(ConfigError, match="sweep.*in progress"):
        sweeps.launch(store, tiny_plan(seed=[1, 2]), ALICE, limits)
    with pytest.raises(ConfigError, match="cannot take 3 more runs"):
        sweeps.launch(store, tiny_plan(seed=[1, 2, 3]), BOB, limits)
    with pytest.raises(ConfigError, match="exceeds this deployment's limit"):
        sweeps.launch(store, tiny_plan(epochs=[1, 5]), BOB, Limits(max_epochs=2))
    with pytest.raises(NotAllowed):
        sweeps.launch(store, tiny_plan(seed=[4]), ANONYMOUS, limits)
    with pytest.raises(NotAllowed):
        sweeps.launch(store, tiny_plan(seed=[4]), BOB, Limits(read_only=True))
    with pytest.raises(ConfigError, match="sweep name"):
        sweeps.launch(store, tiny_plan(seed=[4]), BOB, limits, name="<script>")
    assert len(store.waiting()) == before and len(store.list_sweeps()) == 1
    # Only the owner or the teacher stops it; stopping cancels the queued members.
    with pytest.raises(NotAllowed):
        sweeps.stop(store, launched.sweep_id, BOB, limits)
    assert sweeps.stop(store, launched.sweep_id, ALICE, limits) == 3
    state = sweeps.state(store, launched.sweep_id)
    assert not state.active and state.sweep.stopped and state.finished == 1
    assert sweeps.launch(store, tiny_plan(seed=[1, 2]), ALICE, limits).queued == 2  # a new one may start


def test_waiting_runs_take_turns_between_people(tmp_path):
    store = RunStore(tmp_path / "runs")
    sweeps.launch(store, tiny_plan(seed=[1, 2, 3]), ALICE, Limits())
    single = TINY.replace(seed=99)
    store.enqueue(run_id_for(single), single.to_dict(), "bob")
    order = [r.owner for r in store.waiting()]
    assert order[:2] == ["alice", "bob"] and order.count("alice") == 3
    assert store.claim_next(1, "h").owner == "alice" and store.claim_next(1, "h").id == run_id_for(single)


def test_successive_halving_stops_the_worse_half_at_a_rung(tmp_path):
    store = RunStore(tmp_path / "runs")
    plan = SweepPlan(TINY.replace(epochs=4), {"seed": [1, 2, 3, 4]})
    launched = sweeps.launch(store, plan, ALICE, Limits(), early_stop=True)
    ids = list(launched.outcomes)
    for run_id, accuracy in zip(ids, (0.9, 0.8, 0.7, 0.6)):
        store.add_epoch(run_id, {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": None,
                                 "val_accuracy": None, "test_loss": 1.0, "test_accuracy": accuracy, "elapsed": 1.0})
    assert should_stop_early(store, ids[0], 1, 4) is None
    assert should_stop_early(store, ids[1], 1, 4) is None  # the better half of 4
    reason = should_stop_early(store, ids[3], 1, 4)
    assert reason and "successive halving" in reason and "60.00%" in reason
    assert should_stop_early(store, ids[3], 3, 4) is None  # epoch 3 is not a rung
    assert should_stop_early(store, ids[3], 4, 4) is None  # the last epoch never stops early
    assert [m.early_stopped for m in store.sweep_members(launched.sweep_id)] == [False, False, False, True]
    plain = sweeps.launch(store, SweepPlan(TINY.replace(epochs=4), {"seed": [5, 6]}), BOB, Limits())
    assert all(should_stop_early(store, r, 1, 4) is None for r in plain.outcomes)


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head on loopback with 2 CPUs, stopped at the end (only this one)."""
    pytest.importorskip("ray")
    with local_head(cpus=2) as address:
        yield address


def run_sweep(store, person):
    plan = SweepPlan(TINY, {"lr": [1e-3, 1e-2], "batch_size": [50, 100]})
    queue = JobQueue(store, Limits(max_concurrent=1), data="tests.synthetic:synthetic_mnist")
    try:
        launched = queue.submit_sweep(plan, person)
        wait_all(store, list(launched.outcomes), timeout=240)
        backend = getattr(queue.pool, "backend", "local")
    finally:
        queue.shutdown()
    state = sweeps.state(store, launched.sweep_id)
    return backend, {str(m.params): round(state.runs[m.run_id].test_accuracy, 6) for m in state.members}, state


def test_the_same_sweep_on_local_workers_and_on_a_ray_head_ends_the_same(tmp_path, ray_head, monkeypatch):
    local_backend, local, _ = run_sweep(RunStore(tmp_path / "local"), ALICE)
    monkeypatch.setenv("MNIST_RAY_ADDRESS", ray_head)
    ray_backend, on_ray, state = run_sweep(RunStore(tmp_path / "ray"), ALICE)
    assert (local_backend, ray_backend) == ("local", "ray")
    assert state.finished == 4 and on_ray == local, (on_ray, local)


def test_an_unreachable_cluster_falls_back_to_local_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens there
    store = RunStore(tmp_path / "runs")
    queue = JobQueue(store, Limits(), data="tests.synthetic:synthetic_mnist")
    try:
        assert queue.cluster_problem and "cannot be reached" in queue.cluster_problem
        assert "127.0.0.1" not in queue.cluster_problem
        submission = queue.submit(TINY, ALICE)
        wait_all(store, [submission.run_id])
        assert store.get_run(submission.run_id).status == "finished"
    finally:
        queue.shutdown()


def test_a_hopeless_member_is_stopped_early_by_the_trainer_and_shown_as_such(tmp_path, mnist):
    """Real MNIST (the synthetic digits are separable from the first weights)."""
    store = RunStore(tmp_path / "runs")
    data = mnist
    plan = SweepPlan(TINY.replace(epochs=3), {"lr": [1e-2, 1e-7]})  # 1e-7 barely moves the weights
    launched = sweeps.launch(store, plan, ALICE, Limits(), early_stop=True)
    good, hopeless = list(launched.outcomes)
    assert execute(store, good, TINY.replace(epochs=3, lr=1e-2), data) == "finished"
    assert execute(store, hopeless, TINY.replace(epochs=3, lr=1e-7), data) == "cancelled"
    record = store.get_run(hopeless)
    assert record.epochs_done == 1 and record.message.startswith("Stopped early by successive halving")
    state = sweeps.state(store, launched.sweep_id)
    assert [state.status(m) for m in state.members] == ["finished", "stopped early"]
    assert state.best().run_id == good and not state.active


def test_a_million_values_are_refused_before_any_work():
    """A sweep with 10**6 seeds spent about 10 CPU-minutes de-duplicating before its size check;
    now the count is refused first, and de-duplicating 10,000 values is one pass."""
    with pytest.raises(ConfigError, match="at most 10,000 per setting"):
        sweeps.parse_values("seed", ",".join(str(i) for i in range(10**6)))
    assert len(sweeps.check_values("seed", [*range(9_990), 5, 7])) == 9_990  # duplicates still dropped
