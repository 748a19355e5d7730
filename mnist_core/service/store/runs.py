"""Runs and their metrics: create, read, list, change status, delete; the steps and epochs a
training run reports."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from mnist_core.service.store.database import Database
from mnist_core.service.store.records import (
    EPOCH_KEYS,
    RUN_FIELDS,
    RunRecord,
    RunStoreError,
    STEP_KEYS,
    TERMINAL,
    check_config,
    check_run_id,
    check_status,
    metric_row,
    number,
    to_json,
    whole,
)


class Runs(Database):
    """Runs and their metrics."""

    def create_run(self, run_id: str, config: dict, status: str = "queued") -> bool:
        """Insert a run; False (and nothing changed) if the id exists, so two sessions that
        submit the same config at once get one run."""
        check_run_id(run_id)
        check_status(status)
        check_config(config)
        now = time.time()
        started = now if status == "running" else None
        finished = now if status in TERMINAL else None
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO runs (id, config, status, created, started, finished) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, to_json(config, "config"), status, now, started, finished),
            )
            return cursor.rowcount == 1

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None if there is none (an id that could never exist included)."""
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,)) if isinstance(run_id, str) else []
        return self._record(rows[0]) if rows else None

    def list_runs(self, statuses: Iterable[str] | None = None) -> list[RunRecord]:
        """Runs newest first, optionally only those in `statuses`."""
        order = " ORDER BY created DESC, rowid DESC"
        if statuses is None:
            return [self._record(r) for r in self._read("SELECT * FROM runs" + order)]
        if isinstance(statuses, str):
            raise RunStoreError(f"statuses must be a collection of statuses, e.g. ({statuses!r},)")
        wanted = tuple(dict.fromkeys(check_status(s) for s in statuses))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        rows = self._read(f"SELECT * FROM runs WHERE status IN ({marks})" + order, wanted)
        return [self._record(r) for r in rows]

    def count(self) -> int:
        return self._read("SELECT COUNT(*) FROM runs")[0][0]

    def set_status(self, run_id: str, status: str, message: str = "") -> None:
        """Set status and message; `started` is stamped on entering running, `finished` on
        entering a terminal status."""
        if not self.transition(run_id, status, message):
            raise RunStoreError(f"unknown run {run_id!r}")

    def transition(
        self, run_id: str, status: str, message: str = "", only_from: Iterable[str] | None = None
    ) -> bool:
        """Compare-and-set status: change it only if the current status is in `only_from`
        (any, if None). True if changed. Lets a worker claim a queued run, or finish a run
        without overwriting a concurrent 'cancelled', with no race between check and write."""
        check_status(status)
        if not isinstance(message, str):
            raise RunStoreError(f"message must be a string, got {type(message).__name__}")
        allowed = None if only_from is None else tuple(check_status(s) for s in only_from)
        now = time.time()
        if status == "running":  # keep the first start if it is already running
            stamps = "started = CASE WHEN status = 'running' THEN started ELSE ? END, finished = NULL"
        elif status in TERMINAL:  # keep the first end if it already ended
            stamps = (
                "finished = CASE WHEN finished IS NOT NULL AND status IN "
                f"({', '.join(repr(s) for s in TERMINAL)}) THEN finished ELSE ? END"
            )
        else:  # queued again: it has neither started nor finished
            stamps = "started = NULL, finished = NULL"
        sql = f"UPDATE runs SET {stamps}, status = ?, message = ? WHERE id = ?"
        params: tuple = ((now,) if status != "queued" else ()) + (status, message, run_id)
        if allowed is not None:
            if not allowed:
                return False
            sql += f" AND status IN ({', '.join('?' * len(allowed))})"
            params += allowed
        with self._write() as conn:
            changed = conn.execute(sql, params).rowcount == 1
            if not changed and allowed is not None and not self._exists(conn, run_id):
                raise RunStoreError(f"unknown run {run_id!r}")
            return changed

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Record results: any of device, test_accuracy, test_loss, duration_s, epochs_done,
        summary (a JSON-able dict, replaced whole) and message."""
        unknown = sorted(set(fields) - set(RUN_FIELDS))
        if unknown:
            raise RunStoreError(f"update_run got unknown field {unknown[0]!r}; known: {', '.join(RUN_FIELDS)}")
        values: dict[str, Any] = {}
        for name, value in fields.items():
            if name in ("device", "message"):
                if not isinstance(value, str):
                    raise RunStoreError(f"{name} must be a string, got {value!r}")
                values[name] = value
            elif name == "summary":
                if not isinstance(value, dict):
                    raise RunStoreError(f"summary must be a dict, got {type(value).__name__}")
                values[name] = to_json(value, "summary")
            elif name == "epochs_done":
                values[name] = whole(value, name)
            else:
                values[name] = number(value, name)
        with self._write() as conn:
            if values:
                assignments = ", ".join(f"{name} = ?" for name in values)
                cursor = conn.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*values.values(), run_id))
                found = cursor.rowcount == 1
            else:
                found = self._exists(conn, run_id)
            if not found:
                raise RunStoreError(f"unknown run {run_id!r}")

    def delete_run(self, run_id: str) -> None:
        """Remove the run's rows and files; refused while queued or running (a worker owns it)."""
        check_run_id(run_id)
        self._require_inactive(run_id, "delete")
        # Files first: should we crash between the two steps, the run is an ended run without
        # weights (which the dashboard shows and can retrain), never a row pointing at stale files.
        self._remove_folder(run_id)
        with self._write() as conn:
            self._require_inactive(run_id, "delete", conn)
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))  # steps and epochs cascade

    def add_steps(self, run_id: str, rows: list[dict]) -> None:
        """Append per-step metrics in one transaction (all rows or none). A step that was
        already logged is replaced, so a retried batch does not fail."""
        values = [metric_row(run_id, row, STEP_KEYS, 2) for row in rows]
        if not values:
            return
        marks = ", ".join("?" * (len(STEP_KEYS) + 1))
        self._insert_metrics(run_id, f"INSERT OR REPLACE INTO steps VALUES ({marks})", values)

    def add_epoch(self, run_id: str, row: dict) -> None:
        """Record one epoch's metrics (val_* may be None); logging an epoch again replaces it."""
        values = [metric_row(run_id, row, EPOCH_KEYS, 1)]
        marks = ", ".join("?" * (len(EPOCH_KEYS) + 1))
        self._insert_metrics(run_id, f"INSERT OR REPLACE INTO epochs VALUES ({marks})", values)

    def steps(self, run_id: str, after: int | None = None) -> list[dict]:
        """Per-step metrics ordered by step; `after` returns only later steps (cheap polling)."""
        columns = ", ".join(STEP_KEYS)
        if after is None:
            rows = self._read(f"SELECT {columns} FROM steps WHERE run_id = ? ORDER BY step", (run_id,))
        else:
            rows = self._read(
                f"SELECT {columns} FROM steps WHERE run_id = ? AND step > ? ORDER BY step",
                (run_id, whole(after, "after")),
            )
        return [dict(r) for r in rows]

    def last_step(self, run_id: str) -> dict | None:
        """The latest stored step (progress, speed), or None before the first one."""
        columns = ", ".join(STEP_KEYS)
        rows = self._read(f"SELECT {columns} FROM steps WHERE run_id = ? ORDER BY step DESC LIMIT 1", (run_id,))
        return dict(rows[0]) if rows else None

    def epochs(self, run_id: str) -> list[dict]:
        """Per-epoch metrics ordered by epoch."""
        columns = ", ".join(EPOCH_KEYS)
        rows = self._read(f"SELECT {columns} FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
        return [dict(r) for r in rows]

