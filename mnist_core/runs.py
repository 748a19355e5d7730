"""The run store: every training run, its metrics and its tensors, on disk.

Rows live in SQLite (WAL mode, so readers never block the training thread's writes and a crash
never leaves a half-written database); weights and other tensors live in safetensors files,
which load without executing code, unlike pickle or torch.save. The store is shared by a
background training thread, several dashboard sessions (threads) and possibly a CLI (another
process), so every thread gets its own connection and every write is one IMMEDIATE transaction.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported on first tensor use, so listing runs (a CLI) starts fast.
    import torch

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    device TEXT NOT NULL DEFAULT '',
    test_accuracy REAL,
    test_loss REAL,
    duration_s REAL,
    epochs_done INTEGER NOT NULL DEFAULT 0,
    summary TEXT NOT NULL DEFAULT '{}',
    owner TEXT NOT NULL DEFAULT '',
    worker_pid INTEGER,
    worker_host TEXT NOT NULL DEFAULT '',
    stop_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_queue ON runs (status, created);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created);
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner, started);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    loss REAL,
    accuracy REAL,
    lr REAL,
    images_per_s REAL,
    elapsed REAL,
    total INTEGER,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL,
    train_accuracy REAL,
    val_loss REAL,
    val_accuracy REAL,
    test_loss REAL,
    test_accuracy REAL,
    elapsed REAL,
    PRIMARY KEY (run_id, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS people (
    name_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    claimed REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS people_token ON people (token_hash, claimed);
CREATE TABLE IF NOT EXISTS class_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    spec TEXT NOT NULL,
    early_stop INTEGER NOT NULL DEFAULT 0,
    stopped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sweep_members (
    sweep_id TEXT NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    params TEXT NOT NULL,
    outcome TEXT NOT NULL,
    early_stopped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sweep_id, run_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sweep_members_run ON sweep_members (run_id);
"""
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
# Columns added by schema version 2 (added to a version-1 database when it is opened).
ADDED_COLUMNS = {
    "runs": {
        "owner": "TEXT NOT NULL DEFAULT ''",
        "worker_pid": "INTEGER",
        "worker_host": "TEXT NOT NULL DEFAULT ''",
        "stop_requested": "INTEGER NOT NULL DEFAULT 0",
    },
    "steps": {"total": "INTEGER"},
}

# Connections a forked child inherited: never used, never closed (closing could disturb the
# parent's SQLite locks), just kept referenced so garbage collection does not close them.
_INHERITED: list[sqlite3.Connection] = []


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


class RunStore:
    """SQLite rows plus safetensors files under one root folder; safe across threads and processes."""

    def __init__(self, root: str | Path | None = None):
        if root is None:
            root = os.environ.get("MNIST_RUNS_DIR") or "runs"
        self.root = Path(root).expanduser().resolve()
        self.db_path = self.root / "runs.db"
        self.weights_dir = self.root / "weights"
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            self._init_db()
        except sqlite3.DatabaseError as error:  # not a database, damaged, or locked for 10 s
            raise RunStoreError(f"cannot open the run database {self.db_path}: {error}") from error

    # -- connections and transactions -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, so `_write` controls BEGIN/COMMIT.
        conn = sqlite3.connect(
            self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        # With WAL, NORMAL never corrupts the database; a power cut may only drop the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (a new one after fork: SQLite handles must not cross fork)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid != os.getpid():
            _INHERITED.append(conn)
            conn = None
        if conn is None:
            conn = self._connect()
            local.conn, local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so the busy timeout
        applies; a deferred transaction that later upgrades can fail at once with 'locked'."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        # fetchall ends the statement, and with it the read snapshot that would stall checkpoints.
        return self._conn().execute(sql, params).fetchall()

    def _init_db(self) -> None:
        conn = self._conn()
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:  # Switching to WAL needs a moment alone with the file; another process may hold it.
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if mode.lower() != "wal":
                        raise RunStoreError(f"{self.db_path}: SQLite refused WAL mode (got {mode!r})")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RunStoreError(
                    f"{self.db_path} has schema version {version}, newer than this code's "
                    f"{SCHEMA_VERSION}; update the dashboard or point MNIST_RUNS_DIR elsewhere"
                )
            for table, columns in ADDED_COLUMNS.items():  # a version-1 database gains them
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for name, declaration in columns.items():
                    if present and name not in present:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- runs ---------------------------------------------------------------------------------

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

    # -- the queue ----------------------------------------------------------------------------
    # The waiting line lives here, not in one server's memory: queued runs in order of
    # `created` (the click), claimed by compare-and-set, so several server processes sharing
    # one store never train one run twice.

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

    # -- sweeps -------------------------------------------------------------------------------
    # A sweep is a named list of ordinary runs: a member trained before is simply reused.

    def create_sweep(
        self, sweep_id: str, name: str, owner: str, spec: dict, members: list[tuple[str, dict, dict]],
        early_stop: bool = False, max_total: int | None = None, max_active_per_owner: int | None = None,
    ) -> dict[str, str]:
        """Record a sweep and queue its members (run id, config, swept values) in one
        transaction: all of them or, when a limit is hit (QueueFull), none. Returns each
        member's outcome: "cached", "joined" or "queued"."""
        check_run_id(sweep_id)
        spec_json = to_json(spec, "sweep spec")
        rows = [(check_run_id(run_id), to_json(check_config(config), "config"), to_json(params, "params"))
                for run_id, config, params in members]
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone():
                raise RunStoreError(f"sweep {sweep_id!r} exists already")
            if max_active_per_owner is not None:
                active = conn.execute(
                    "SELECT COUNT(DISTINCT s.id) FROM sweeps s JOIN sweep_members m ON m.sweep_id = s.id "
                    "JOIN runs r ON r.id = m.run_id WHERE s.owner = ? AND s.stopped = 0 "
                    "AND r.status IN ('queued', 'running')", (owner,)).fetchone()[0]
                if active >= max_active_per_owner:
                    raise QueueFull(f"you already have {active} sweep(s) in progress (limit "
                                    f"{max_active_per_owner} per person); wait for it to end or stop it")
            outcomes: dict[str, str] = {}
            fresh = []
            for run_id, payload, _ in rows:
                if run_id in outcomes:
                    continue
                row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
                outcomes[run_id] = existing_outcome(row) or "queued"
                if outcomes[run_id] == "queued":
                    fresh.append((row, run_id, payload))
            if max_total is not None and fresh:
                waiting = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'queued'").fetchone()[0]
                if waiting + len(fresh) > max_total:
                    raise QueueFull(
                        f"the server's queue cannot take {len(fresh)} more runs ({waiting} waiting, limit "
                        f"{max_total}); choose fewer values or try again later"
                    )
            for row, run_id, payload in fresh:
                self._insert_or_reset(conn, row, run_id, payload, owner, None)
            conn.execute("INSERT INTO sweeps (id, name, owner, created, spec, early_stop) VALUES (?, ?, ?, ?, ?, ?)",
                         (sweep_id, name, owner, time.time(), spec_json, int(early_stop)))
            conn.executemany(
                "INSERT OR IGNORE INTO sweep_members (sweep_id, run_id, position, params, outcome) VALUES (?, ?, ?, ?, ?)",
                [(sweep_id, run_id, position, params, outcomes[run_id])
                 for position, (run_id, _, params) in enumerate(rows)],
            )
            return outcomes

    def get_sweep(self, sweep_id: str) -> SweepRecord | None:
        rows = self._read("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))
        return self._sweep(rows[0]) if rows else None

    def list_sweeps(self) -> list[SweepRecord]:
        """Every sweep, newest first."""
        return [self._sweep(r) for r in self._read("SELECT * FROM sweeps ORDER BY created DESC")]

    def sweep_members(self, sweep_id: str) -> list[SweepMember]:
        rows = self._read("SELECT * FROM sweep_members WHERE sweep_id = ? ORDER BY position", (sweep_id,))
        return [SweepMember(r["run_id"], r["position"], json.loads(r["params"]), r["outcome"],
                            bool(r["early_stopped"])) for r in rows]

    def sweeps_of_run(self, run_id: str) -> list[SweepRecord]:
        rows = self._read("SELECT s.* FROM sweeps s JOIN sweep_members m ON m.sweep_id = s.id "
                          "WHERE m.run_id = ? ORDER BY s.created", (run_id,))
        return [self._sweep(r) for r in rows]

    def mark_early_stopped(self, sweep_id: str, run_id: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE sweep_members SET early_stopped = 1 WHERE sweep_id = ? AND run_id = ?",
                         (sweep_id, run_id))

    def mark_sweep_stopped(self, sweep_id: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE sweeps SET stopped = 1 WHERE id = ?", (sweep_id,))

    def delete_sweep(self, sweep_id: str) -> None:
        """Forget the sweep; its runs stay (they are ordinary runs, perhaps shared)."""
        with self._write() as conn:
            conn.execute("DELETE FROM sweeps WHERE id = ?", (sweep_id,))

    def epoch_metric(self, sweep_id: str, epoch: int) -> dict[str, float]:
        """Each member's validation accuracy (test accuracy without a validation split) after
        `epoch`, for the members that reached it: what successive halving compares."""
        rows = self._read(
            "SELECT e.run_id, COALESCE(e.val_accuracy, e.test_accuracy) FROM epochs e "
            "JOIN sweep_members m ON m.run_id = e.run_id WHERE m.sweep_id = ? AND e.epoch = ?",
            (sweep_id, epoch))
        return {r[0]: r[1] for r in rows if r[1] is not None}

    @staticmethod
    def _sweep(row: sqlite3.Row) -> SweepRecord:
        return SweepRecord(row["id"], row["name"], row["owner"], row["created"], json.loads(row["spec"]),
                           bool(row["early_stop"]), bool(row["stopped"]))

    # -- people and class settings -------------------------------------------------------------

    def claim_name(self, name_key: str, name: str, token_hash: str) -> bool:
        """Give `name` to the browser whose token hashes to `token_hash`: True if it is now that
        browser's name (new, or claimed by it before), False if another browser holds it."""
        with self._write() as conn:
            row = conn.execute("SELECT token_hash FROM people WHERE name_key = ?", (name_key,)).fetchone()
            if row is not None and row[0] != token_hash:
                return False
            conn.execute(
                "INSERT INTO people (name_key, name, token_hash, claimed) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name_key) DO UPDATE SET name = excluded.name, claimed = excluded.claimed",
                (name_key, name, token_hash, time.time()),
            )
            return True

    def name_for(self, token_hash: str) -> str | None:
        """The name this browser claimed last, or None."""
        rows = self._read("SELECT name FROM people WHERE token_hash = ? ORDER BY claimed DESC LIMIT 1",
                          (token_hash,))
        return rows[0][0] if rows else None

    def class_setting(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM class_settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_class_setting(self, key: str, value: str | None) -> None:
        """Set (or, with None, remove) one deployment-wide setting, such as the pinned run."""
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM class_settings WHERE key = ?", (key,))
            else:
                conn.execute("INSERT INTO class_settings (key, value) VALUES (?, ?) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # -- metrics ------------------------------------------------------------------------------

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

    # -- tensors ------------------------------------------------------------------------------

    def tensor_path(self, run_id: str, name: str) -> Path:
        """Where a run's tensor file lives (whether or not it exists); validates both parts."""
        return self.weights_dir / check_run_id(run_id) / f"{check_tensor_name(name)}{SUFFIX}"

    def save_tensors(self, run_id: str, name: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        """Write tensors to root/weights/<run_id>/<name>.safetensors atomically: readers see
        the old file or the new one, never half of one, even if this process dies mid-write."""
        import safetensors.torch
        import torch

        path = self.tensor_path(run_id, name)
        if not isinstance(tensors, Mapping):
            raise RunStoreError(f"tensors must be a dict of name -> tensor, got {type(tensors).__name__}")
        prepared: dict[str, torch.Tensor] = {}
        storages: set[tuple[int, int]] = set()
        for key, tensor in tensors.items():
            if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
                raise RunStoreError(f"tensors must map str to torch.Tensor; {key!r} maps to {type(tensor).__name__}")
            tensor = tensor.detach().to("cpu").contiguous()
            storage = tensor.untyped_storage()
            ident = (storage.data_ptr(), storage.nbytes())
            # safetensors refuses tensors that share memory (tied weights, views): copy those.
            if ident in storages or tensor.nbytes != storage.nbytes():
                tensor = tensor.clone()
            storages.add(ident)
            prepared[key] = tensor
        if self.get_run(run_id) is None:
            raise RunStoreError(f"unknown run {run_id!r}: create it before saving its tensors")
        data = safetensors.torch.save(prepared, metadata={"format": "pt"})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
        return path

    def load_tensors(self, run_id: str, name: str) -> dict[str, torch.Tensor]:
        """Load a run's tensor file onto the CPU."""
        import safetensors.torch

        path = self.tensor_path(run_id, name)
        try:
            data = path.read_bytes()  # one read: a concurrent replace cannot tear it
        except FileNotFoundError:
            if self.get_run(run_id) is None:
                raise RunStoreError(f"unknown run {run_id!r}") from None
            raise RunStoreError(f"run {run_id!r} has no saved {name!r} (no {path.name})") from None
        try:
            return safetensors.torch.load(data)
        except Exception as error:  # SafetensorError and friends: a damaged or foreign file
            raise RunStoreError(f"{path} is not a readable safetensors file: {error}") from None

    def has_tensors(self, run_id: str, name: str) -> bool:
        return self.tensor_path(run_id, name).is_file()

    def tensor_names(self, run_id: str) -> list[str]:
        """Names of the tensor files a run has, sorted (weights, artifacts)."""
        folder = self.weights_dir / check_run_id(run_id)
        if not folder.is_dir():
            return []
        stems = (p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))
        return sorted(s for s in stems if TENSOR_NAME.fullmatch(s))

    def save_weights(self, run_id: str, state_dict: Mapping[str, torch.Tensor]) -> Path:
        return self.save_tensors(run_id, WEIGHTS, state_dict)

    def load_weights(self, run_id: str) -> dict[str, torch.Tensor]:
        return self.load_tensors(run_id, WEIGHTS)

    # -- helpers ------------------------------------------------------------------------------

    def _record(self, row: sqlite3.Row) -> RunRecord:
        values = dict(row)
        values.pop("turn", None)  # the queue order's helper columns
        values.pop("served", None)
        values.pop("seq", None)
        values["config"] = json.loads(values["config"])
        values["summary"] = json.loads(values["summary"])
        return RunRecord(**values)

    @staticmethod
    def _exists(conn: sqlite3.Connection, run_id: str) -> bool:
        return conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None

    def _require_inactive(self, run_id: str, action: str, conn: sqlite3.Connection | None = None) -> None:
        rows = (conn or self._conn()).execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchall()
        if not rows:
            raise RunStoreError(f"unknown run {run_id!r}")
        if rows[0][0] in ACTIVE:
            raise RunStoreError(f"cannot {action} run {run_id!r} while it is {rows[0][0]}; cancel it first")

    def _remove_folder(self, run_id: str) -> None:
        folder = self.weights_dir / check_run_id(run_id)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        elif folder.is_symlink():
            folder.unlink()

    def _insert_metrics(self, run_id: str, sql: str, values: list[tuple]) -> None:
        try:
            with self._write() as conn:
                conn.executemany(sql, values)
        except sqlite3.IntegrityError:
            # The only constraint a well-formed row can break is the run id's foreign key.
            if self.get_run(run_id) is None:
                raise RunStoreError(f"unknown run {run_id!r}") from None
            raise


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
