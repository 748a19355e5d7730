"""The run store: rows, metrics and tensors survive threads, processes and reopening."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mnist_core.service.store import records as store_records
from mnist_core.service.store import ACTIVE, STATUSES, RunRecord, RunStore, RunStoreError

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"model": "cnn-small", "epochs": 2, "lr": 0.001}


def step_row(step: int, epoch: int = 0) -> dict:
    return {"step": step, "epoch": epoch, "loss": 1.0 / (step + 1), "accuracy": 0.5,
            "lr": 1e-3, "images_per_s": 1000.0, "elapsed": step * 0.01, "total": 100}


def epoch_row(epoch: int, val: bool = True) -> dict:
    return {"epoch": epoch, "train_loss": 0.5, "train_accuracy": 0.9,
            "val_loss": 0.4 if val else None, "val_accuracy": 0.91 if val else None,
            "test_loss": 0.3, "test_accuracy": 0.92, "elapsed": 1.5}


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "store")


def test_layout_and_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path / "a")
    assert (store.root / "runs.db").is_file() and (store.root / "weights").is_dir()
    monkeypatch.setenv("MNIST_RUNS_DIR", str(tmp_path / "from-env"))
    assert RunStore().root == (tmp_path / "from-env").resolve()
    monkeypatch.delenv("MNIST_RUNS_DIR")
    monkeypatch.chdir(tmp_path)
    assert RunStore().root == (tmp_path / "runs").resolve()


def test_create_get_list(store: RunStore) -> None:
    assert store.create_run("cnn-small-1a2b3c4d5e6f", CONFIG)
    time.sleep(0.002)
    assert store.create_run("mlp-000000000001", {"model": "mlp"}, status="running")
    run = store.get_run("cnn-small-1a2b3c4d5e6f")
    assert isinstance(run, RunRecord)
    assert run.config == CONFIG and run.status == "queued" and run.message == ""
    assert run.started is None and run.finished is None and run.epochs_done == 0 and run.summary == {}
    assert run.active
    assert store.get_run("missing") is None and store.get_run("../etc") is None
    assert [r.id for r in store.list_runs()] == ["mlp-000000000001", "cnn-small-1a2b3c4d5e6f"]
    assert [r.id for r in store.list_runs(["queued"])] == ["cnn-small-1a2b3c4d5e6f"]
    assert store.list_runs(["finished"]) == [] and store.list_runs([]) == []
    assert store.get_run("mlp-000000000001").started is not None
    assert store.count() == 2
    with pytest.raises(RunStoreError, match="unknown status"):
        store.list_runs(["done"])
    with pytest.raises(RunStoreError, match="collection"):
        store.list_runs("queued")


def test_create_twice_returns_false_and_changes_nothing(store: RunStore) -> None:
    assert store.create_run("r1", CONFIG)
    before = store.get_run("r1")
    assert store.create_run("r1", {"other": True}, status="running") is False
    assert store.get_run("r1") == before
    assert store.count() == 1


def test_status_transitions_set_timestamps(store: RunStore) -> None:
    store.create_run("r1", CONFIG)
    store.set_status("r1", "running")
    started = store.get_run("r1").started
    assert started is not None and store.get_run("r1").finished is None
    store.set_status("r1", "running", "epoch 2")  # staying running keeps the first start
    assert store.get_run("r1").started == started and store.get_run("r1").message == "epoch 2"
    store.set_status("r1", "finished", "done")
    run = store.get_run("r1")
    assert run.status == "finished" and run.message == "done"
    assert run.finished is not None and run.finished >= started and not run.active
    store.set_status("r1", "queued")  # queued again: neither started nor finished
    assert (store.get_run("r1").started, store.get_run("r1").finished) == (None, None)
    with pytest.raises(RunStoreError, match="unknown status"):
        store.set_status("r1", "exploded")
    with pytest.raises(RunStoreError, match="unknown run"):
        store.set_status("nope", "running")
    assert set(ACTIVE) < set(STATUSES)


def test_transition_is_compare_and_set(store: RunStore) -> None:
    store.create_run("r1", CONFIG)
    assert store.transition("r1", "running", only_from=["queued"])
    assert not store.transition("r1", "running", only_from=["queued"])  # a second worker loses
    store.set_status("r1", "cancelled", "stopped by user")
    assert not store.transition("r1", "finished", only_from=["running"])  # cancel is not overwritten
    assert store.get_run("r1").status == "cancelled"
    with pytest.raises(RunStoreError, match="unknown run"):
        store.transition("nope", "running", only_from=["queued"])


def test_update_run(store: RunStore) -> None:
    store.create_run("r1", CONFIG)
    summary = {"per_class": [0.9] * 10, "images_per_s": 1234.5}
    store.update_run("r1", device="cpu", test_accuracy=0.98, test_loss=torch.tensor(0.05),
                     duration_s=12.5, epochs_done=2, summary=summary, message="ok")
    run = store.get_run("r1")
    assert (run.device, run.test_accuracy, run.duration_s, run.epochs_done) == ("cpu", 0.98, 12.5, 2)
    assert run.test_loss == pytest.approx(0.05) and run.summary == summary and run.message == "ok"
    with pytest.raises(RunStoreError, match="unknown field"):
        store.update_run("r1", accuracy=1.0)
    with pytest.raises(RunStoreError, match="unknown run"):
        store.update_run("nope", device="cpu")
    with pytest.raises(RunStoreError, match="JSON"):
        store.update_run("r1", summary={"bad": object()})


def test_steps_and_epochs_round_trip_in_order(store: RunStore) -> None:
    store.create_run("r1", CONFIG)
    store.add_steps("r1", [step_row(s) for s in (3, 1, 2)])
    store.add_steps("r1", [step_row(0)])
    store.add_steps("r1", [])
    assert [r["step"] for r in store.steps("r1")] == [0, 1, 2, 3]
    assert store.steps("r1")[2] == step_row(2)
    assert [r["step"] for r in store.steps("r1", after=1)] == [2, 3]
    store.add_epoch("r1", epoch_row(1, val=False))
    store.add_epoch("r1", epoch_row(0))
    assert store.epochs("r1") == [epoch_row(0), epoch_row(1, val=False)]
    assert store.steps("other") == [] and store.epochs("other") == []


def test_metric_writes_are_all_or_nothing(store: RunStore) -> None:
    store.create_run("r1", CONFIG)
    with pytest.raises(RunStoreError, match="missing 'epoch'"):
        store.add_steps("r1", [step_row(0), {"step": 1}])
    with pytest.raises(RunStoreError, match="unknown metric"):
        store.add_steps("r1", [{**step_row(0), "lost": 1.0}])
    with pytest.raises(RunStoreError, match="unknown run"):
        store.add_steps("nope", [step_row(0)])
    with pytest.raises(RunStoreError, match="unknown run"):
        store.add_epoch("nope", epoch_row(0))
    assert store.steps("r1") == []


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tensors_round_trip_exactly(store: RunStore, dtype: torch.dtype) -> None:
    store.create_run("r1", CONFIG)
    generator = torch.Generator().manual_seed(0)
    base = (torch.randn(3, 4, generator=generator) * 10).to(dtype)
    tensors = {"w": base, "t": base.t(), "scalar": base[0, 0].clone(), "empty": torch.zeros(0, dtype=dtype)}
    path = store.save_tensors("r1", "snap_1", tensors)
    assert path == store.root / "weights" / "r1" / "snap_1.safetensors"
    loaded = store.load_tensors("r1", "snap_1")
    assert loaded.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert loaded[key].dtype == dtype and loaded[key].shape == tensor.shape
        assert torch.equal(loaded[key], tensor)
    with safe_open(str(path), framework="pt") as handle:  # a real safetensors file
        assert set(handle.keys()) == set(tensors)
        assert torch.equal(handle.get_tensor("w"), base)


def test_weights_of_a_model(store: RunStore) -> None:
    store.create_run("r1", CONFIG)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert not store.has_tensors("r1", "weights")
    store.save_weights("r1", model.state_dict())
    assert store.has_tensors("r1", "weights") and store.tensor_names("r1") == ["weights"]
    copy = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    copy.load_state_dict(store.load_weights("r1"))
    x = torch.randn(5, 4)
    assert torch.equal(copy(x), model(x))
    # Tied (shared) tensors are copied rather than refused.
    store.save_tensors("r1", "tied", {"a": model[0].weight, "b": model[0].weight})
    assert torch.equal(store.load_tensors("r1", "tied")["b"], model[0].weight)


def test_missing_tensors_and_bad_input(store: RunStore) -> None:
    store.create_run("r1", CONFIG)
    with pytest.raises(RunStoreError, match="no saved 'weights'"):
        store.load_weights("r1")
    with pytest.raises(RunStoreError, match="unknown run"):
        store.load_weights("nope")
    with pytest.raises(RunStoreError, match="unknown run"):
        store.save_weights("nope", {"w": torch.zeros(1)})
    with pytest.raises(RunStoreError, match="str to torch.Tensor"):
        store.save_tensors("r1", "x", {"w": [1.0]})
    (store.root / "weights" / "r1").mkdir()
    (store.root / "weights" / "r1" / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RunStoreError, match="not a readable safetensors"):
        store.load_weights("r1")


@pytest.mark.parametrize("bad", ["", "..", ".", "../x", "a/b", "a\\b", "x" * 81, "abc\n", "é", None, 3])
def test_invalid_run_ids_are_refused(store: RunStore, bad: object) -> None:
    for call in (
        lambda: store.create_run(bad, CONFIG),  # type: ignore[arg-type]
        lambda: store.save_tensors(bad, "weights", {}),  # type: ignore[arg-type]
        lambda: store.load_tensors(bad, "weights"),  # type: ignore[arg-type]
        lambda: store.has_tensors(bad, "weights"),  # type: ignore[arg-type]
        lambda: store.delete_run(bad),  # type: ignore[arg-type]
        lambda: store.enqueue(bad, CONFIG),  # type: ignore[arg-type]
    ):
        with pytest.raises(RunStoreError, match="invalid run id"):
            call()
    assert store.count() == 0


@pytest.mark.parametrize("bad", ["", "Weights", "../weights", "a.b", "a b", "x" * 65, "w\n"])
def test_invalid_tensor_names_are_refused(store: RunStore, bad: str) -> None:
    store.create_run("r1", CONFIG)
    with pytest.raises(RunStoreError, match="invalid tensor file name"):
        store.save_tensors("r1", bad, {"w": torch.zeros(1)})
    with pytest.raises(RunStoreError, match="invalid tensor file name"):
        store.load_tensors("r1", bad)
    assert not (store.root / "weights" / "r1").exists()


def test_a_failed_write_keeps_the_old_file(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create_run("r1", CONFIG)
    store.save_weights("r1", {"w": torch.ones(2)})

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store_records.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save_weights("r1", {"w": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(store.load_weights("r1")["w"], torch.ones(2))
    assert os.listdir(store.root / "weights" / "r1") == ["weights.safetensors"]  # no temp file left


def test_delete_removes_rows_and_folder_and_refuses_active_runs(store: RunStore) -> None:
    store.create_run("r1", CONFIG)
    store.add_steps("r1", [step_row(0), step_row(1)])
    store.add_epoch("r1", epoch_row(0))
    store.save_weights("r1", {"w": torch.ones(2)})
    for status in ACTIVE:
        store.set_status("r1", status)
        with pytest.raises(RunStoreError, match=f"while it is {status}"):
            store.delete_run("r1")
    assert store.has_tensors("r1", "weights")
    store.set_status("r1", "finished")
    store.delete_run("r1")
    assert store.get_run("r1") is None and store.count() == 0
    assert store.steps("r1") == [] and store.epochs("r1") == []
    assert not (store.root / "weights" / "r1").exists()
    with pytest.raises(RunStoreError, match="unknown run"):
        store.delete_run("r1")
    assert store.create_run("r1", CONFIG)  # the id is free again, with no leftover metrics
    assert store.steps("r1") == []


def test_enqueue_after_an_ended_attempt_starts_afresh_and_reuses_or_joins_otherwise(store: RunStore) -> None:
    store.create_run("r1", CONFIG)
    store.set_status("r1", "running")
    store.add_steps("r1", [step_row(0)])
    store.add_epoch("r1", epoch_row(0))
    store.update_run("r1", device="cpu", test_accuracy=0.5, epochs_done=1, summary={"x": 1})
    store.save_weights("r1", {"w": torch.ones(2)})
    store.save_tensors("r1", "confusion", {"m": torch.ones(10, 10)})
    assert store.enqueue("r1", CONFIG, "bob") == "joined"  # running: nothing changes
    assert store.get_run("r1").epochs_done == 1
    store.set_status("r1", "interrupted", "server stopped")
    new_config = {**CONFIG, "epochs": 3}
    assert store.enqueue("r1", new_config, "bob") == "queued"
    run = store.get_run("r1")
    assert run.status == "queued" and run.config == new_config and run.message == "" and run.owner == "bob"
    assert (run.started, run.finished, run.test_accuracy, run.epochs_done, run.summary, run.device) == (
        None, None, None, 0, {}, ""
    )
    assert store.steps("r1") == [] and store.epochs("r1") == []
    assert store.tensor_names("r1") == [] and not (store.root / "weights" / "r1").exists()
    assert store.claim_next(123, "here").id == "r1" and store.claim_next(124, "here") is None  # claimed once
    store.transition("r1", "finished")
    assert store.enqueue("r1", new_config, "carol") == "cached"


def test_reopening_sees_everything(tmp_path: Path) -> None:
    first = RunStore(tmp_path)
    first.create_run("r1", CONFIG)
    first.add_steps("r1", [step_row(0)])
    first.add_epoch("r1", epoch_row(0))
    first.update_run("r1", summary={"k": [1, 2]})
    first.save_weights("r1", {"w": torch.arange(4)})
    second = RunStore(tmp_path)
    assert second.get_run("r1") == first.get_run("r1")
    assert second.steps("r1") == [step_row(0)] and second.epochs("r1") == [epoch_row(0)]
    assert torch.equal(second.load_weights("r1")["w"], torch.arange(4))
    assert second._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert second._conn().execute("PRAGMA user_version").fetchone()[0] == store_records.SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store._conn().execute("PRAGMA user_version = 99")
    with pytest.raises(RunStoreError, match="newer"):
        RunStore(tmp_path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "runs.db").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(RunStoreError, match="cannot open the run database"):
        RunStore(tmp_path)


def test_concurrent_writers_and_reader(store: RunStore) -> None:
    run_ids = [f"run-{i}" for i in range(4)]
    for run_id in run_ids:
        store.create_run(run_id, CONFIG, status="running")
    errors: list[BaseException] = []
    done = threading.Event()

    def write(run_id: str) -> None:
        try:
            for step in range(200):  # one transaction per row: the most lock traffic
                store.add_steps(run_id, [step_row(step)])
        except BaseException as error:
            errors.append(error)

    def read() -> None:
        try:
            while not done.is_set():
                store.list_runs()
                for run_id in run_ids:
                    store.steps(run_id)
        except BaseException as error:
            errors.append(error)

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(run_id,)) for run_id in run_ids]
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert errors == []
    for run_id in run_ids:
        assert [r["step"] for r in store.steps(run_id)] == list(range(200))


WRITER = """
import sys, torch
from mnist_core.service.store import RunStore
store = RunStore(sys.argv[1])
store.create_run("child", {"from": "subprocess"})
store.set_status("child", "running")
for step in range(200):
    store.add_steps("child", [{"step": step, "epoch": 0, "loss": float(step)}])
store.add_epoch("child", {"epoch": 0, "train_loss": 1.0})
store.save_weights("child", {"w": torch.arange(6, dtype=torch.float16).reshape(2, 3)})
store.set_status("child", "finished", "from another process")
"""


def test_another_process_writes_while_this_one_does(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.create_run("parent", CONFIG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    step = 0
    while child.poll() is None or step < 50:  # write and read here while the child writes there
        if step < 1000:
            store.add_steps("parent", [step_row(step)])
            step += 1
        store.list_runs()
        store.steps("child")
        time.sleep(0.001)  # leave the child (importing torch) a CPU on small machines
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    run = store.get_run("child")
    assert run.status == "finished" and run.message == "from another process" and run.config == {"from": "subprocess"}
    assert [r["loss"] for r in store.steps("child")] == [float(s) for s in range(200)]
    assert store.epochs("child")[0]["train_loss"] == 1.0
    assert torch.equal(store.load_weights("child")["w"], torch.arange(6, dtype=torch.float16).reshape(2, 3))
    assert len(store.steps("parent")) == step
