"""The run store: every training run, its metrics and its tensors, on disk.

Rows live in SQLite (WAL mode, so readers never block the training thread's writes and a crash
never leaves a half-written database); weights and other tensors live in safetensors files,
which load without executing code, unlike pickle or torch.save. The store is shared by a
background training thread, several dashboard sessions (threads) and possibly a CLI (another
process), so every thread gets its own connection and every write is one IMMEDIATE transaction.
"""

from __future__ import annotations

from mnist_core.service.store.people import People
from mnist_core.service.store.queue import Queue
from mnist_core.service.store.records import (
    ACTIVE,
    BUSY_TIMEOUT_S,
    EPOCH_KEYS,
    QueueFull,
    REUSABLE,
    RUN_FIELDS,
    RUN_ID,
    RunRecord,
    RunStoreError,
    SCHEMA_VERSION,
    STATUSES,
    STEP_KEYS,
    SUFFIX,
    SweepMember,
    SweepRecord,
    TENSOR_NAME,
    TERMINAL,
    WEIGHTS,
    check_config,
    check_run_id,
    check_status,
    check_tensor_name,
    existing_outcome,
    metric_row,
    number,
    to_json,
    whole,
    write_atomically,
)
from mnist_core.service.store.runs import Runs
from mnist_core.service.store.sweeps import Sweeps
from mnist_core.service.store.tensors import Tensors


class RunStore(Runs, Queue, Sweeps, People, Tensors):
    """The whole store: one object per process (or thread) that reads and writes every part."""


__all__ = [
    "RunStore",
    "ACTIVE",
    "BUSY_TIMEOUT_S",
    "EPOCH_KEYS",
    "QueueFull",
    "REUSABLE",
    "RUN_FIELDS",
    "RUN_ID",
    "RunRecord",
    "RunStoreError",
    "SCHEMA_VERSION",
    "STATUSES",
    "STEP_KEYS",
    "SUFFIX",
    "SweepMember",
    "SweepRecord",
    "TENSOR_NAME",
    "TERMINAL",
    "WEIGHTS",
    "check_config",
    "check_run_id",
    "check_status",
    "check_tensor_name",
    "existing_outcome",
    "metric_row",
    "number",
    "to_json",
    "whole",
    "write_atomically",
]
