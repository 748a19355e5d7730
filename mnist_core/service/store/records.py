"""What the run store keeps, as Python values: statuses, records, errors, and the checks every
value passes before it reaches SQLite or a file name."""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported on first tensor use, so listing runs (a CLI) starts fast.
    pass

STATUSES = ("queued", "running", "finished", "diverged", "cancelled", "interrupted", "failed")
ACTIVE = ("queued", "running")
TERMINAL = tuple(s for s in STATUSES if s not in ACTIVE)
REUSABLE = ("finished", "diverged")  # outcomes that identical configs simply reuse

SCHEMA_VERSION = 4  # 3: people (claimed names) and class_settings (the pinned run); 4: sweeps
BUSY_TIMEOUT_S = 10.0
RUN_ID = re.compile(r"[A-Za-z0-9_.-]{1,80}")
TENSOR_NAME = re.compile(r"[a-z0-9_-]{1,64}")
WEIGHTS = "weights"
SUFFIX = ".safetensors"

# `total` is the run's planned number of steps, so a reader gets "step of total" from one row.
STEP_KEYS = ("step", "epoch", "loss", "accuracy", "lr", "images_per_s", "elapsed", "total")
EPOCH_KEYS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "elapsed",
)
# update_run's fields and how each value is coerced before it reaches SQLite.
RUN_FIELDS = ("device", "test_accuracy", "test_loss", "duration_s", "epochs_done", "summary", "message")

class RunStoreError(Exception):
    """A request the store cannot honour: unknown run, bad id or name, missing weights."""


class QueueFull(RunStoreError):
    """An owner already has as many runs waiting as a deployment allows."""


@dataclass
class RunRecord:
    """One row of the runs table, with config and summary decoded from JSON."""

    id: str
    config: dict
    status: str
    message: str
    created: float
    started: float | None
    finished: float | None
    device: str
    test_accuracy: float | None
    test_loss: float | None
    duration_s: float | None
    epochs_done: int
    summary: dict = field(default_factory=dict)
    owner: str = ""
    worker_pid: int | None = None  # the process training it (while running), on `worker_host`
    worker_host: str = ""
    stop_requested: int = 0

    @property
    def active(self) -> bool:
        """Queued or running: a worker owns it, so it must not be deleted or reset."""
        return self.status in ACTIVE


@dataclass
class SweepRecord:
    """A named set of runs launched together; `spec` holds what was swept and how."""

    id: str
    name: str
    owner: str
    created: float
    spec: dict
    early_stop: bool
    stopped: bool


@dataclass
class SweepMember:
    run_id: str
    position: int
    params: dict  # the swept settings' values for this member
    outcome: str  # at launch: "cached", "joined" or "queued"
    early_stopped: bool


def existing_outcome(row: sqlite3.Row | None) -> str | None:
    """What asking for a run already stored means: "cached" (it ended usably), "joined" (it is
    queued or running now), or None (absent, or an attempt to train again)."""
    if row is not None and row[0] in REUSABLE:
        return "cached"
    if row is not None and row[0] in ACTIVE:
        return "joined"
    return None


def check_run_id(run_id: object) -> str:
    """Return the id if it is safe as a folder name; the check that stops path traversal."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise RunStoreError(
            f"invalid run id {run_id!r}: use 1 to 80 letters, digits, '_', '.' or '-' (not '.' or '..')"
        )
    return run_id


def check_tensor_name(name: object) -> str:
    """Return the name if it is a safe file stem."""
    if not isinstance(name, str) or not TENSOR_NAME.fullmatch(name):
        raise RunStoreError(f"invalid tensor file name {name!r}: use 1 to 64 of a-z, 0-9, '_' or '-'")
    return name


def check_config(config: object) -> dict:
    if not isinstance(config, dict):
        raise RunStoreError(f"config must be a dict, got {type(config).__name__}")
    return config


def check_status(status: object) -> str:
    if status not in STATUSES:
        raise RunStoreError(f"unknown status {status!r}; known: {', '.join(STATUSES)}")
    return status  # type: ignore[return-value]


def to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as error:
        raise RunStoreError(f"{what} must be JSON-serialisable: {error}") from None


def number(value: Any, what: str) -> float | None:
    """A float for SQLite; accepts numpy and 0-d torch scalars. NaN is stored as NULL by SQLite."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RunStoreError(f"{what} must be a number or None, got {value!r}") from None


def whole(value: Any, what: str) -> int:
    try:
        result = int(value)
    except (TypeError, ValueError):
        raise RunStoreError(f"{what} must be a whole number, got {value!r}") from None
    if isinstance(value, float) and (not math.isfinite(value) or value != result):
        raise RunStoreError(f"{what} must be a whole number, got {value!r}")
    return result


def metric_row(run_id: str, row: Mapping[str, Any], keys: tuple[str, ...], required: int) -> tuple:
    """Order a metric dict as the table's columns; the first `required` keys must be present."""
    unknown = sorted(set(row) - set(keys))
    if unknown:
        raise RunStoreError(f"unknown metric {unknown[0]!r}; known: {', '.join(keys)}")
    missing = [k for k in keys[:required] if row.get(k) is None]
    if missing:
        raise RunStoreError(f"metric row is missing {missing[0]!r}")
    values = [whole(row[k], k) for k in keys[:required]]
    values += [number(row.get(k), k) for k in keys[required:]]
    return (run_id, *values)




def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, then rename over the target."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
