"""A run's identity and whether its trainer is still alive: ids, recovery, the run as it stands.

Every module that reads or launches runs needs these (jobs, sweeps, the worker pool, pages), so
they sit below all of them and import nothing but the store and the engine's config.
"""

from __future__ import annotations

import hashlib
import os
import socket

from mnist_core.engine.config import TrainConfig
from mnist_core.engine.models import model_version
from mnist_core.service.store import ACTIVE, RunRecord, RunStore

HOST = socket.gethostname()
INTERRUPTED = "The server stopped before this run finished; launch it again."


def run_id_for(config: TrainConfig) -> str:
    """A run's id: the model name (for people) plus the config hash (for identity). A model that
    has changed since runs were stored with it (models.ModelSpec.earlier) puts its version into
    the hash, so launching it trains today's network instead of finding a run of an earlier one."""
    digest, version = config.config_hash(), model_version(config.model)
    if version:
        digest = hashlib.sha256(f"{digest} version {version}".encode()).hexdigest()[:12]
    return f"{config.model}-{digest}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphaned(record: RunRecord) -> bool:
    """Running, claimed by a process on this machine that no longer exists. (Runs claimed on
    another host are judged there; queued runs belong to no process and wait for any worker.)"""
    return (
        record.status == "running" and record.worker_host == HOST
        and record.worker_pid is not None and not pid_alive(record.worker_pid)
    )


def recover(store: RunStore, run_id: str | None = None, message: str = INTERRUPTED) -> int:
    """Mark runs whose training process died as interrupted: one run, or every active run.

    Called whenever a run is read for display, joined or listed, not only at start-up, so a
    replica killed outright never leaves a run that newcomers watch forever.
    """
    if run_id is None:
        records = store.list_runs(ACTIVE)
    else:
        record = store.get_run(run_id)
        records = [record] if record is not None else []
    count = 0
    for record in records:
        if is_orphaned(record):
            # Compare-and-set on the same owner: a run that ended or was claimed again meanwhile keeps that.
            count += store.transition(record.id, "interrupted", message, only_from=["running"])
    return count


def current(store: RunStore, run_id: str) -> RunRecord | None:
    """A run as it stands, its training process checked: what every page should read."""
    recover(store, run_id)
    return store.get_run(run_id)


