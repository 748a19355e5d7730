"""Sweeps: named sets of runs launched together, their members and successive halving's marks."""

from __future__ import annotations

import json
import sqlite3
import time

from mnist_core.service.store.database import Database
from mnist_core.service.store.records import (
    QueueFull,
    RunStoreError,
    SweepMember,
    SweepRecord,
    check_config,
    check_run_id,
    existing_outcome,
    to_json,
)


class Sweeps(Database):
    """Sweeps and their members."""

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

