"""The waiting line: queued rows claimed by compare-and-set, in turns between people, and stop
requests that any server may make."""

from __future__ import annotations

import sqlite3
import time

from mnist_core.service.store.database import Database
from mnist_core.service.store.records import (
    QueueFull,
    RunRecord,
    RunStoreError,
    check_config,
    check_run_id,
    existing_outcome,
    to_json,
)

# Waiting runs start in turns between people: each person's first waiting run before anyone's
# second, and between people the one served least recently first; then in click order. A
# 64-member sweep never makes a classmate wait for all of it.
QUEUE_ORDER = """
SELECT * FROM (
    SELECT q.*, q.rowid AS seq, ROW_NUMBER() OVER (PARTITION BY q.owner ORDER BY q.created, q.rowid) AS turn,
           (SELECT MAX(s.started) FROM runs s WHERE s.owner = q.owner) AS served
    FROM runs q WHERE q.status = 'queued'
) ORDER BY turn, COALESCE(served, 0), created, seq
"""


class Queue(Database):
    """The waiting line and stop requests."""

    def _reset(self, conn: sqlite3.Connection, run_id: str, payload: str, owner: str | None,
               worker: tuple[int, str] | None) -> None:
        """Inside a write transaction: the run starts over, queued (or running for `worker`).

        Files go while this transaction holds the write lock, so no worker can claim the run
        and write new weights before the old ones are gone; should we crash after removing
        them, the rollback leaves an ended run without weights, never a fresh run with stale ones.
        """
        self._remove_folder(run_id)
        conn.execute("DELETE FROM steps WHERE run_id = ?", (run_id,))
        conn.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
        now = time.time()
        status, started, pid, host = ("running", now, *worker) if worker else ("queued", None, None, "")
        conn.execute(
            "UPDATE runs SET config = ?, status = ?, message = '', created = ?, started = ?, "
            "finished = NULL, device = '', test_accuracy = NULL, test_loss = NULL, duration_s = NULL, "
            "epochs_done = 0, summary = '{}', owner = COALESCE(?, owner), worker_pid = ?, "
            "worker_host = ?, stop_requested = 0 WHERE id = ?",
            (payload, status, now, started, owner, pid, host, run_id),
        )

    def enqueue(
        self, run_id: str, config: dict, owner: str = "", max_waiting: int | None = None,
        worker: tuple[int, str] | None = None, max_total: int | None = None,
    ) -> str:
        """Ask for `config` to be trained, in one transaction. Returns "cached" (an identical
        run already ended usably), "joined" (it is queued or running now) or "queued" (created,
        or an earlier cancelled/interrupted/failed attempt reset). With `worker` (pid, host) the
        run is claimed at once by that process (the CLI trains it itself). Raises QueueFull when
        `owner` already has `max_waiting` runs queued, or the server `max_total`."""
        check_run_id(run_id)
        payload = to_json(check_config(config), "config")
        if not isinstance(owner, str):
            raise RunStoreError(f"owner must be a string, got {type(owner).__name__}")
        with self._write() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            known = existing_outcome(row)
            if known:
                return known
            if max_waiting is not None and worker is None:
                waiting = conn.execute(
                    "SELECT COUNT(*) FROM runs WHERE status = 'queued' AND owner = ?", (owner,)
                ).fetchone()[0]
                if waiting >= max_waiting:
                    raise QueueFull(
                        f"you already have {waiting} runs waiting (limit {max_waiting} per person); "
                        "wait for one to start or stop one"
                    )
            if max_total is not None and worker is None:
                waiting = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'queued'").fetchone()[0]
                if waiting >= max_total:
                    raise QueueFull(
                        f"the server's queue is full ({waiting} runs waiting, limit {max_total}); "
                        "try again when some have started"
                    )
            self._insert_or_reset(conn, row, run_id, payload, owner, worker)
            return "queued"

    def _insert_or_reset(self, conn: sqlite3.Connection, row: sqlite3.Row | None, run_id: str, payload: str,
                         owner: str, worker: tuple[int, str] | None) -> None:
        if row is None:
            now = time.time()
            status, started, pid, host = ("running", now, *worker) if worker else ("queued", None, None, "")
            conn.execute(
                "INSERT INTO runs (id, config, status, created, started, owner, worker_pid, worker_host) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, payload, status, now, started, owner, pid, host),
            )
        else:
            self._reset(conn, run_id, payload, owner, worker)

    def claim_next(self, pid: int, host: str) -> RunRecord | None:
        """The oldest queued run, now running and owned by worker `pid` on `host`; None when
        nothing waits. One transaction: two workers never get the same run."""
        with self._write() as conn:
            row = conn.execute(f"SELECT id FROM ({QUEUE_ORDER}) LIMIT 1").fetchone()
            if row is None:
                return None
            self._claim(conn, row[0], pid, host)
        return self.get_run(row[0])

    def claim(self, run_id: str, pid: int, host: str) -> bool:
        """Take one queued run for worker `pid` on `host`; False if it is not queued (any more)."""
        with self._write() as conn:
            return self._claim(conn, run_id, pid, host)

    @staticmethod
    def _claim(conn: sqlite3.Connection, run_id: str, pid: int, host: str) -> bool:
        cursor = conn.execute(
            "UPDATE runs SET status = 'running', started = ?, finished = NULL, worker_pid = ?, "
            "worker_host = ?, stop_requested = 0 WHERE id = ? AND status = 'queued'",
            (time.time(), pid, host, run_id),
        )
        return cursor.rowcount == 1

    def waiting(self) -> list[RunRecord]:
        """Queued runs in the order they will start: in turns between owners, then by click."""
        rows = self._read(QUEUE_ORDER)
        return [self._record(r) for r in rows]

    def request_stop(self, run_id: str) -> bool:
        """Stop a run: a queued one ends now as cancelled; a running one is flagged, and its
        trainer (in whichever process) stops after the current batch. False if it had ended."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = 'cancelled', message = 'Stopped before it started.', finished = ? "
                "WHERE id = ? AND status = 'queued'",
                (time.time(), run_id),
            )
            if cursor.rowcount == 0:
                cursor = conn.execute(
                    "UPDATE runs SET stop_requested = 1 WHERE id = ? AND status = 'running'", (run_id,)
                )
            if cursor.rowcount == 0 and not self._exists(conn, run_id):
                raise RunStoreError(f"unknown run {run_id!r}")
            return cursor.rowcount == 1

    def stop_requested(self, run_id: str) -> bool:
        rows = self._read("SELECT stop_requested FROM runs WHERE id = ?", (run_id,))
        return bool(rows and rows[0][0])

