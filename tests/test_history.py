"""Shaping run metrics for the Train and Compare pages, on synthetic runs (no training)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mnist_core.settings import Limits
from mnist_core.engine.config import TrainConfig
from mnist_core.service.history import (
    CONFIG_COLUMNS,
    FORM_COLUMNS,
    HYPERPARAMETERS,
    curves_frame,
    device_label,
    epoch_frame,
    filter_runs,
    format_duration,
    outcome,
    progress_from_step,
    runs_frame,
    settings_for_form,
    smooth,
    step_frame,
    thin,
)
from mnist_core.service.store import RunRecord


def record(run_id: str, status: str = "finished", accuracy: float | None = 0.9, **config) -> RunRecord:
    return RunRecord(
        id=run_id, config=TrainConfig(**config).to_dict(), status=status, message="", created=1_700_000_000.0,
        started=None, finished=None, device="cpu", test_accuracy=accuracy, test_loss=None, duration_s=2.5,
        epochs_done=1, summary={"images_per_s": 1000.0, "parameters": 7850},
    )


def test_smooth_is_a_bias_corrected_moving_average():
    # alpha 0.5: weights 1/2, 1/4, ... renormalised to the points seen so far.
    assert smooth([1.0, 4.0, 4.0], alpha=0.5).tolist() == pytest.approx([1.0, 3.0, 25 / 7])
    assert smooth([2.0, 4.0], alpha=1.0).tolist() == [2.0, 4.0]  # alpha 1: no smoothing
    assert smooth([3.0] * 5, alpha=0.1).tolist() == pytest.approx([3.0] * 5)  # no start-up bias
    assert smooth([], 0.3).shape == (0,)


def test_smooth_carries_the_average_over_gaps():
    out = smooth([None, float("nan"), 4.0, None, 0.0], alpha=0.5)
    assert math.isnan(out[0]) and math.isnan(out[1])
    assert out[2:].tolist() == pytest.approx([4.0, 4.0, 4 / 3])


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_smooth_rejects_alpha_outside_0_1(alpha):
    with pytest.raises(ValueError, match="alpha"):
        smooth([1.0], alpha)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0.01, 1.0))
def test_smooth_stays_within_the_range_of_the_values(values, alpha):
    out = smooth(values, alpha)
    assert len(out) == len(values)
    assert min(values) - 1e-6 <= out.min() and out.max() <= max(values) + 1e-6


def test_runs_frame_flattens_config_and_results():
    frame = runs_frame([record("a", lr=0.01, model="linear"), record("b", status="running", accuracy=None)])
    assert list(frame["id"]) == ["a", "b"]
    assert set(CONFIG_COLUMNS) <= set(frame.columns) and "extra" not in frame.columns
    assert frame.columns.is_unique  # pyarrow (st.dataframe) refuses duplicate names
    assert frame.loc[0, "device"] == "auto" and frame.loc[0, "device_used"] == "cpu"
    assert frame.loc[0, "lr"] == 0.01 and frame.loc[0, "model"] == "linear"
    assert frame.loc[0, "images_per_s"] == 1000.0 and frame.loc[0, "parameters"] == 7850
    assert math.isnan(frame.loc[1, "test_accuracy"])
    assert pd.api.types.is_datetime64_any_dtype(frame["created"])
    assert set(HYPERPARAMETERS) <= set(frame.columns)


def test_runs_frame_of_no_runs_still_has_every_column():
    frame = runs_frame([])
    assert frame.empty and "test_accuracy" in frame.columns and "model" in frame.columns
    assert filter_runs(frame, ["linear"], ["finished"], 0.5, (1e-4, 1e-2)).empty


def test_filter_runs_combines_filters():
    frame = runs_frame([
        record("lin-fast", model="linear", lr=0.1, accuracy=0.92),
        record("lin-slow", model="linear", lr=1e-4, accuracy=0.85),
        record("mlp", model="mlp", lr=1e-3, accuracy=0.97),
        record("mlp-run", model="mlp", lr=1e-3, status="running", accuracy=None),
    ])
    ids = lambda f: sorted(f["id"])  # noqa: E731
    assert ids(filter_runs(frame)) == ids(frame)
    assert ids(filter_runs(frame, models=["linear"])) == ["lin-fast", "lin-slow"]
    assert ids(filter_runs(frame, statuses=["running"])) == ["mlp-run"]
    assert ids(filter_runs(frame, min_accuracy=0.9)) == ["lin-fast", "mlp"]  # unfinished run drops out
    assert ids(filter_runs(frame, min_accuracy=0.0)) == ids(frame)  # 0 keeps runs without accuracy
    assert ids(filter_runs(frame, lr_range=(1e-3, 0.1))) == ["lin-fast", "mlp", "mlp-run"]
    assert ids(filter_runs(frame, lr_range=(0.1, 1e-3))) == ["lin-fast", "mlp", "mlp-run"]  # order-free
    assert ids(filter_runs(frame, models=["mlp"], statuses=["finished"], min_accuracy=0.5)) == ["mlp"]
    assert filter_runs(frame, models=[]).empty


def test_epoch_frame_is_long_and_skips_missing_splits():
    rows = [
        {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": None, "val_accuracy": None,
         "test_loss": 0.4, "test_accuracy": 0.85, "elapsed": 1.0},
        {"epoch": 2, "train_loss": 0.3, "train_accuracy": 0.9, "val_loss": None, "val_accuracy": None,
         "test_loss": 0.35, "test_accuracy": 0.88, "elapsed": 2.0},
    ]
    frame = epoch_frame(rows)
    assert len(frame) == 4 and set(frame["split"]) == {"train", "test"}
    test = frame[frame["split"] == "test"]
    assert test["accuracy"].tolist() == [0.85, 0.88] and test["epoch"].tolist() == [1, 2]
    assert list(epoch_frame([]).columns) == ["epoch", "split", "loss", "accuracy"]


def test_step_frame_adds_smoothed_columns():
    rows = [{"step": s, "epoch": 1, "loss": loss, "accuracy": 0.5, "lr": 0.1, "images_per_s": 10.0, "elapsed": s}
            for s, loss in ((10, 2.0), (20, 1.0))]
    frame = step_frame(rows, alpha=0.5)
    assert frame["loss_smooth"].tolist() == pytest.approx([2.0, 4 / 3])
    assert frame["accuracy_smooth"].tolist() == [0.5, 0.5]
    assert step_frame([]).empty


def test_curves_frame_stacks_runs_from_the_store(store):
    for run_id, offset in (("r1", 0.0), ("r2", 1.0)):
        store.create_run(run_id, TrainConfig(model="linear").to_dict())
        store.add_steps(run_id, [{"step": s, "epoch": 1, "loss": offset + 1.0 / s, "accuracy": 0.5} for s in (10, 20, 30)])
        store.add_epoch(run_id, {"epoch": 1, "train_loss": offset, "train_accuracy": 0.9, "val_loss": 0.2,
                                 "val_accuracy": 0.91, "test_loss": 0.3, "test_accuracy": 0.92})
    epochs = curves_frame(store, ["r1", "r2"], "epoch")
    assert len(epochs) == 6 and set(epochs["run_id"]) == {"r1", "r2"}
    assert epochs[(epochs.run_id == "r2") & (epochs.split == "train")]["loss"].item() == 1.0
    steps = curves_frame(store, ["r1", "r2"], "step", alpha=0.5)
    assert len(steps) == 6
    # Each run is smoothed on its own: r2's first smoothed value is its own first loss.
    assert steps[steps.run_id == "r2"]["loss_smooth"].iloc[0] == pytest.approx(1.1)
    assert steps[steps.run_id == "r2"]["loss"].iloc[0] == pytest.approx(1.1)
    assert curves_frame(store, [], "step").empty and "run_id" in curves_frame(store, []).columns
    with pytest.raises(ValueError, match="kind"):
        curves_frame(store, ["r1"], "batch")


def test_progress_comes_from_the_stored_step_alone():
    """Each stored step carries the run's total, so no page re-derives steps per epoch."""
    row = {"step": 211, "epoch": 1, "elapsed": 10.0, "images_per_s": 5000.0, "total": 422}
    progress = progress_from_step(row, epochs=2)
    assert progress.fraction == pytest.approx(0.5) and progress.eta_s == pytest.approx(10.0)
    text = progress.text()
    assert "50%" in text and "epoch 1 of 2" in text and "step 211 of 422" in text and "10 s left" in text
    assert "5,000 images/s" in text
    unknown = progress_from_step({"step": 5, "epoch": 1, "elapsed": 1.0, "total": None}, epochs=1)
    assert unknown.fraction == 0.0 and unknown.eta_s is None and "step 5" in unknown.text()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "–"), (float("nan"), "–"), (0.4, "0 s"), (59.4, "59 s"), (185, "3 min 5 s"), (3720, "1 h 02 min")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_outcome_names_the_result_and_keeps_the_trainer_message():
    level, text = outcome(record("a", accuracy=0.9234))
    assert level == "success" and "92.34%" in text and "cpu" in text
    diverged = record("b", status="diverged", accuracy=None)
    diverged.message = "The loss became nan at step 10. Lower the learning rate (it was 10), e.g. to 1."
    level, text = outcome(diverged)
    assert level == "error" and "Lower the learning rate" in text
    assert outcome(record("c", status="cancelled"))[0] == "warning"
    assert outcome(record("d", status="failed"))[0] == "error"


def test_hyperparameters_are_numeric_columns():
    frame = runs_frame([record("a"), record("b", lr=0.5)])
    for column in HYPERPARAMETERS:
        assert np.issubdtype(frame[column].dtype, np.number), column


def test_settings_for_form_fits_a_stored_config_to_this_deployment():
    stored = TrainConfig(model="mlp", epochs=20, batch_size=4096, lr=0.05, device="cuda", time_budget_s=60).to_dict()
    stored["weight_decay"] = 0  # JSON written by hand or another tool: an int where a float belongs
    values = settings_for_form(stored, Limits(max_epochs=5, max_batch_size=512), ["auto", "cpu"])
    assert values["epochs"] == 5 and values["batch_size"] == 512
    assert values["device"] == "auto"  # no CUDA here
    assert values["lr"] == 0.05 and values["model"] == "mlp"
    assert isinstance(values["weight_decay"], float) and isinstance(values["time_budget_s"], float)
    assert set(values) == set(FORM_COLUMNS)
    TrainConfig(**values)  # a valid config again


def test_settings_for_form_fills_missing_settings_with_defaults():
    values = settings_for_form({"model": "linear"}, Limits(), ["auto", "cpu"])
    defaults = TrainConfig().to_dict()
    assert all(values[name] == defaults[name] for name in FORM_COLUMNS if name != "model")
    assert values["time_budget_s"] is None


def test_device_label_prefers_the_recorded_device():
    assert device_label(record("a")) == "cpu (requested: auto)"
    running = record("b", status="running", accuracy=None, device="cpu")
    running.device = ""
    assert device_label(running).startswith("CPU (")  # resolved on this machine while it trains


def test_accuracy_range_pads_the_data_but_stays_within_0_and_1():
    from mnist_core.service.history import accuracy_range

    assert accuracy_range([0.9176]) == pytest.approx([0.9126, 0.9226])
    assert accuracy_range([0.5, 0.999]) == pytest.approx([0.4501, 1.0])
    assert accuracy_range([float("nan"), None]) == [0.0, 1.0]


def test_thin_keeps_the_shape_the_ends_and_short_frames():
    frame = pd.DataFrame({"step": range(1, 1001), "loss": np.linspace(2.0, 0.1, 1000)})
    thinned = thin(frame, max_points=100)
    assert 90 <= len(thinned) <= 101
    assert thinned["step"].iloc[0] == 1 and thinned["step"].iloc[-1] == 1000  # both ends kept
    assert thinned["step"].is_monotonic_increasing
    assert thin(frame.head(50), max_points=100).equals(frame.head(50))
