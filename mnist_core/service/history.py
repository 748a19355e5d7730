"""Run metrics shaped for charts and tables: smoothing, flat run tables, filters, long curves.

The Train and Compare pages only lay these frames out; keeping the shaping here (pandas, no
Streamlit) lets the tests check it on synthetic runs and the CLI reuse it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mnist_core.engine.config import TrainConfig
from mnist_core.engine.naming import DEFAULTS, run_name

if TYPE_CHECKING:
    from mnist_core.settings import Limits
    from mnist_core.service.store import RunRecord, RunStore

# Every setting, in TrainConfig's order ("extra" is reserved and always empty).
CONFIG_COLUMNS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "extra")
# What the Train page's form sets: every setting but the dataset, which the dashboard does not
# offer while MNIST is the only one registered (datasets.py).
FORM_COLUMNS = tuple(name for name in CONFIG_COLUMNS if name != "dataset")
RUN_COLUMNS = (
    "id", "name", *CONFIG_COLUMNS, "status", "test_accuracy", "test_loss", "duration_s", "device_used",
    "created", "epochs_done", "images_per_s", "parameters", "message", "owner",
)
# Numeric columns worth plotting against test accuracy, in the order a picker offers them.
HYPERPARAMETERS = (
    "lr", "batch_size", "epochs", "weight_decay", "dropout", "momentum", "val_split", "seed",
    "duration_s", "parameters", "images_per_s",
)
SPLITS = ("train", "val", "test")


def smooth(values: Iterable[float | None], alpha: float = 0.1) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard draws it).

    Per-batch losses are noisy; the average shows the trend. A plain EMA started at the first
    value clings to it for many points, which on a fast-falling loss draws a misleading hump;
    dividing by the weight seen so far, 1 - (1 - alpha)^n, makes point n the weighted mean of
    the n values so far. Missing or NaN values keep the previous average (NaN until the first
    real value), so a gap does not poison the line.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    out = []
    average, weight = 0.0, 0.0
    for value in values:
        if value is not None and not math.isnan(value):
            average = (1 - alpha) * average + alpha * value
            weight = (1 - alpha) * weight + alpha
        out.append(average / weight if weight else math.nan)
    return np.asarray(out, dtype=float)


def runs_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run: its id, every setting, status and results, newest first as given.

    `device` is the requested device (a setting, often 'auto'); `device_used` the one it ran on.
    `created` becomes a timestamp (local time) so tables show a date, not epoch seconds.
    """
    rows = []
    for record in records:
        row: dict[str, Any] = {"id": record.id, "name": run_name(record.config)}
        # A setting a stored config lacks (stored before the setting existed) had its default.
        row.update({name: record.config.get(name, DEFAULTS[name]) for name in CONFIG_COLUMNS})
        summary = record.summary or {}
        row.update(
            status=record.status, test_accuracy=record.test_accuracy, test_loss=record.test_loss,
            duration_s=record.duration_s, device_used=record.device, created=record.created,
            epochs_done=record.epochs_done, images_per_s=summary.get("images_per_s"),
            parameters=summary.get("parameters"), message=record.message, owner=record.owner,
        )
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    for column in ("test_accuracy", "test_loss", "duration_s", "lr", "images_per_s", "parameters", "time_budget_s"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["created"] = pd.to_datetime(frame["created"], unit="s", utc=True).dt.tz_convert(None)
    return frame


def visible_runs(records: Sequence[RunRecord], owner: str | None, pinned: str | None = None) -> list[RunRecord]:
    """The runs a picker offers: one person's (`owner`) or everyone's (None), the teacher's
    pinned reference run first (also in "my runs": it is the class's yardstick)."""
    chosen = [r for r in records if owner is None or r.owner == owner or r.id == pinned]
    return sorted(chosen, key=lambda r: r.id != pinned)  # stable: the given order otherwise


def leaderboard(frame: pd.DataFrame) -> pd.DataFrame:
    """Each person's best finished run: highest test accuracy, ties to the shorter training.
    Ranked 1..n; people with equal accuracy and time share a rank."""
    scored = frame[(frame["status"] == "finished") & frame["test_accuracy"].notna() & (frame["owner"] != "")]
    if scored.empty:
        return pd.DataFrame(columns=["rank", "person", "test_accuracy", "duration_s", "model", "settings", "id"])
    ordered = scored.assign(duration_s=scored["duration_s"].fillna(math.inf)).sort_values(
        ["test_accuracy", "duration_s", "created"], ascending=[False, True, True], kind="stable")
    best = ordered.drop_duplicates("owner").reset_index(drop=True)
    keys = list(zip(-best["test_accuracy"], best["duration_s"]))
    ranks = [1 + next(i for i, k in enumerate(keys) if k == key) for key in keys]
    settings = [
        f"{r.epochs} epoch(s), batch {r.batch_size}, {r.optimizer} lr {r.lr:g}, schedule {r.schedule}, "
        f"augment {r.augment}, dropout {r.dropout:g}, seed {r.seed}"
        for r in best.itertuples()
    ]
    return pd.DataFrame({
        "rank": ranks, "person": best["owner"], "test_accuracy": best["test_accuracy"],
        "duration_s": best["duration_s"].replace(math.inf, math.nan), "model": best["model"],
        "settings": settings, "id": best["id"],
    })


def filter_runs(
    frame: pd.DataFrame,
    models: Iterable[str] | None = None,
    statuses: Iterable[str] | None = None,
    min_accuracy: float = 0.0,
    lr_range: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Rows matching every given filter; None (or 0 for accuracy) means "do not filter".

    A positive `min_accuracy` (a fraction, 0..1) drops runs without a test accuracy, since an
    unfinished run cannot meet it. The learning-rate range is inclusive, with a relative
    tolerance so a bound read back from a slider still matches the stored float.
    """
    keep = pd.Series(True, index=frame.index)
    if models is not None:
        keep &= frame["model"].isin(list(models))
    if statuses is not None:
        keep &= frame["status"].isin(list(statuses))
    if min_accuracy > 0:
        keep &= frame["test_accuracy"].fillna(-1.0) >= min_accuracy
    if lr_range is not None:
        low, high = sorted(lr_range)
        lr = frame["lr"]
        keep &= (lr >= low * (1 - 1e-9)) & (lr <= high * (1 + 1e-9))
    return frame[keep]


def epoch_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Per-epoch metrics in long format: one row per (epoch, split) with loss and accuracy.

    Long format lets one Plotly call colour by split; splits a run did not measure (no
    validation set) are left out rather than drawn as empty lines.
    """
    records = []
    for row in rows:
        for split in SPLITS:
            loss, accuracy = row.get(f"{split}_loss"), row.get(f"{split}_accuracy")
            if loss is None and accuracy is None:
                continue
            records.append({"epoch": row["epoch"], "split": split, "loss": loss, "accuracy": accuracy})
    frame = pd.DataFrame(records, columns=["epoch", "split", "loss", "accuracy"])
    return frame.astype({"epoch": int, "loss": float, "accuracy": float})


def step_frame(rows: Sequence[dict], alpha: float = 0.1) -> pd.DataFrame:
    """Per-step metrics with EMA-smoothed loss and accuracy next to the raw values."""
    frame = pd.DataFrame(list(rows), columns=["step", "epoch", "loss", "accuracy", "lr", "images_per_s", "elapsed", "total"])
    frame = frame.astype({"loss": float, "accuracy": float, "lr": float, "images_per_s": float, "elapsed": float})
    frame["loss_smooth"] = smooth(frame["loss"], alpha)
    frame["accuracy_smooth"] = smooth(frame["accuracy"], alpha)
    return frame


def thin(frame: pd.DataFrame, max_points: int = 400) -> pd.DataFrame:
    """At most about `max_points` evenly spaced rows, always keeping the last: a chart of a long
    run looks the same, but a browser redraws (and a server sends) a fraction of the points."""
    if len(frame) <= max_points:
        return frame
    stride = math.ceil(len(frame) / max_points)
    keep = list(range(0, len(frame) - 1, stride)) + [len(frame) - 1]
    return frame.iloc[keep]


def curves_frame(store: RunStore, run_ids: Sequence[str], kind: str = "epoch", alpha: float = 0.1) -> pd.DataFrame:
    """Curves of several runs stacked in long format with a `run_id` column, for overlays.

    kind "epoch" gives `epoch_frame` rows (split, loss, accuracy); "step" gives `step_frame`
    rows, each run smoothed on its own so one run's tail does not bleed into the next.
    """
    if kind not in ("epoch", "step"):
        raise ValueError(f"kind must be 'epoch' or 'step', got {kind!r}")
    parts = []
    for run_id in run_ids:
        part = epoch_frame(store.epochs(run_id)) if kind == "epoch" else step_frame(store.steps(run_id), alpha)
        parts.append(part.assign(run_id=run_id))
    if not parts:
        empty = epoch_frame([]) if kind == "epoch" else step_frame([], alpha)
        return empty.assign(run_id=pd.Series(dtype=str))
    return pd.concat(parts, ignore_index=True)


def settings_for_form(config: dict, limits: Limits, devices: Sequence[str]) -> dict[str, Any]:
    """A stored run's settings as values a training form can show here: every setting with
    its type, missing ones at their defaults, epochs and batch size within this deployment's
    caps, and a device this machine lacks replaced by 'auto'."""
    defaults = TrainConfig().to_dict()
    values: dict[str, Any] = {}
    for name in FORM_COLUMNS:
        value, kind = config.get(name, defaults[name]), type(defaults[name])
        values[name] = kind(value) if kind in (int, float) else value  # JSON may give 1 for 1.0
    values["epochs"] = min(values["epochs"], limits.max_epochs)
    values["batch_size"] = min(values["batch_size"], limits.max_batch_size)
    if values["device"] not in devices:
        values["device"] = "auto"
    if values["time_budget_s"] is not None:
        values["time_budget_s"] = float(values["time_budget_s"])
    return values


@dataclass(frozen=True)
class LiveProgress:
    """How far a running job is, from its latest stored step."""

    fraction: float  # 0..1 of all steps
    step: int
    total: int | None
    epoch: int
    epochs: int
    eta_s: float | None
    images_per_s: float | None

    def text(self) -> str:
        parts = [f"{self.fraction:.0%}", f"epoch {self.epoch} of {self.epochs}"]
        parts.append(f"step {self.step:,} of {self.total:,}" if self.total else f"step {self.step:,}")
        if self.eta_s is not None:
            parts.append(f"about {format_duration(self.eta_s)} left")
        if self.images_per_s:
            parts.append(f"{self.images_per_s:,.0f} images/s")
        return " · ".join(parts)


def progress_from_step(row: dict, epochs: int) -> LiveProgress:
    """Progress from the latest stored step, which carries the run's total number of steps."""
    step, total, elapsed = int(row["step"]), row.get("total"), row.get("elapsed")
    total = int(total) if total else None
    eta = elapsed / step * max(total - step, 0) if total and elapsed is not None and step > 0 else None
    return LiveProgress(
        fraction=min(step / total, 1.0) if total else 0.0, step=step, total=total, epoch=int(row["epoch"]),
        epochs=epochs, eta_s=eta, images_per_s=row.get("images_per_s"),
    )


def format_duration(seconds: float | None) -> str:
    """'42 s', '3 min 5 s', '1 h 02 min'; a dash when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def device_label(record: RunRecord) -> str:
    """Where a run trains: the device it recorded at its end, else the one its requested device
    resolves to on this machine (what a worker here uses while the run is in progress)."""
    from mnist_core.engine.device import describe_device, resolve_device  # torch: only when asked

    requested = record.config.get("device", "auto")
    if record.device:
        return f"{record.device} (requested: {requested})"
    try:
        return f"{describe_device(resolve_device(requested))} (requested: {requested})"
    except ValueError:
        return f"{requested} (not available on this machine)"


def outcome(record: RunRecord) -> tuple[str, str]:
    """(level, sentence) describing how a run ended; level is success, warning, error or info.

    The trainer's own message is kept: for a diverged run it already names a lower learning rate.
    """
    accuracy = f"{record.test_accuracy:.2%}" if record.test_accuracy is not None else "not measured"
    took = format_duration(record.duration_s)
    where = f" on {record.device}" if record.device else ""
    if record.status == "finished":
        note = "" if record.message in ("", "Training finished.") else f" {record.message}"
        return "success", f"Finished: test accuracy {accuracy} after {record.epochs_done} epoch(s), {took}{where}.{note}"
    if record.status == "diverged":
        return "error", f"Diverged: {record.message}"
    if record.status == "failed":
        return "error", f"Failed: {record.message}"
    if record.status == "cancelled":
        return "warning", f"Cancelled: {record.message or 'stopped before the end.'}"
    if record.status == "interrupted":
        return "warning", f"Interrupted: {record.message or 'the server stopped before it finished.'}"
    return "info", f"{record.status.capitalize()}."


def accuracy_range(values: Iterable[float], pad: float = 0.005) -> list[float]:
    """A y-axis range for accuracies: the data with a margin, never below 0 or above 100%
    (Plotly's autorange pads a single point out to 150%)."""
    finite = [v for v in values if v is not None and v == v]
    if not finite:
        return [0.0, 1.0]
    low, high = min(finite), max(finite)
    margin = max(pad, 0.1 * (high - low))
    return [max(0.0, low - margin), min(1.0, high + margin)]


def metrics_revision(record: RunRecord, last_step: dict | None) -> tuple:
    """Changes whenever the run has new metrics: the cache key of its figures, so a tab that
    polls a run which has not moved since the last poll rebuilds nothing."""
    return record.created, record.status, record.epochs_done, last_step["step"] if last_step else None
