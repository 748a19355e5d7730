"""The store's SQLite database: one connection per thread (and per process), IMMEDIATE write
transactions, the schema and its upgrades. Every part of the store (runs, queue, sweeps, people,
tensors) builds on this class."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mnist_core import settings
from mnist_core.service.store.records import (
    ACTIVE,
    BUSY_TIMEOUT_S,
    RunRecord,
    RunStoreError,
    SCHEMA_VERSION,
    check_run_id,
)

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



class Database:
    """SQLite rows plus safetensors files under one root folder; safe across threads and processes."""

    def __init__(self, root: str | Path | None = None):
        if root is None:
            root = settings.runs_dir()
        self.root = Path(root).expanduser().resolve()
        self.db_path = self.root / "runs.db"
        self.weights_dir = self.root / "weights"
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            self._init_db()
        except sqlite3.DatabaseError as error:  # not a database, damaged, or locked for 10 s
            raise RunStoreError(f"cannot open the run database {self.db_path}: {error}") from error

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

