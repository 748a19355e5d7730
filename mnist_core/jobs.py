"""A run's life, in one place: submitted, claimed, trained, recorded, stopped, recovered.

The waiting line is the run store itself (queued rows, claimed by compare-and-set), so every
server process that shares one store sees one queue and no run is ever trained twice. Training
never runs inside the web server: warm worker processes (mnist_core.workers) claim queued runs
and call `execute`, which is also what the CLI calls, so every run fills the store the same way.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from mnist_core import access
from mnist_core.access import Person
from mnist_core.config import ConfigError, Limits, TrainConfig
from mnist_core.data import Mnist
from mnist_core.models import model_version
from mnist_core.naming import run_name
from mnist_core.runs import ACTIVE, QueueFull, RunRecord, RunStore
from mnist_core.sweeps import Launched, SweepPlan, launch
from mnist_core.sweeps import stop as stop_sweep
from mnist_core.train import EpochEvent, StepEvent, TrainResult

HOST = socket.gethostname()
INTERRUPTED = "The server stopped before this run finished; launch it again."
STOP_CHECK_S = 0.25  # how often a trainer looks at the store for a stop request

TrainFunction = Callable[..., TrainResult]


def run_id_for(config: TrainConfig) -> str:
    """A run's id: the model name (for people) plus the config hash (for identity). A model that
    has changed since runs were stored with it (models.ModelSpec.earlier) puts its version into
    the hash, so launching it trains today's network instead of finding a run of an earlier one."""
    digest, version = config.config_hash(), model_version(config.model)
    if version:
        digest = hashlib.sha256(f"{digest} version {version}".encode()).hexdigest()[:12]
    return f"{config.model}-{digest}"


@dataclass
class Submission:
    run_id: str
    outcome: str  # "cached" (already trained), "joined" (same config already queued/running), "queued"


def submit(
    store: RunStore, config: TrainConfig, owner: str, limits: Limits, worker: tuple[int, str] | None = None
) -> Submission:
    """Ask for `config` to be trained; raises ConfigError past this deployment's limits.

    A run left active by a dead process is recovered first, so it is trained again rather
    than joined. With `worker` the caller trains it itself (the CLI), else a worker claims it.
    """
    limits.check(config)
    if not isinstance(owner, str) or not owner.strip():
        access.require_name(access.ANONYMOUS)
    run_id = run_id_for(config)
    recover(store, run_id)
    try:
        outcome = store.enqueue(run_id, config.to_dict(), owner, limits.max_queued_per_person, worker,
                                max_total=limits.max_queued_total)
    except QueueFull as err:
        raise ConfigError("queue", str(err)) from None
    return Submission(run_id, outcome)


class StopSignal:
    """What a trainer polls between batches (`is_set`, as a threading.Event): a stop request in
    the store, from any server, or the end of the process that started this worker. Reads the
    store at most every STOP_CHECK_S, so a fast model is not slowed by it."""

    def __init__(self, store: RunStore, run_id: str, parent_pid: int | None = None):
        self.store, self.run_id, self.parent_pid = store, run_id, parent_pid
        self.reason: str | None = None  # "requested", "shutdown" or "early" once set
        self.message = ""
        self._next_check = 0.0

    def is_set(self) -> bool:
        if self.reason is None and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + STOP_CHECK_S
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                self.reason = "shutdown"
            elif self.store.stop_requested(self.run_id):
                self.reason = "requested"
        return self.reason is not None

    def shutdown(self) -> None:
        self.reason = "shutdown"

    def stop_early(self, message: str) -> None:
        """A sweep's successive halving judged this run hopeless (see sweeps.should_stop_early)."""
        self.reason, self.message = "early", message


def execute(
    store: RunStore,
    run_id: str,
    config: TrainConfig,
    data: Mnist,
    cancel: StopSignal | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    on_epoch: Callable[[EpochEvent], None] | None = None,
    train_function: TrainFunction | None = None,
) -> str:
    """Train one run to its end, recording everything; returns the final status.

    The run is either claimed already (a worker's claim_next, the CLI's submit) or still queued,
    and then claimed here by this process. Every step report is stored with its place in the
    whole run (`total`), so a page shows progress from one row. Any crash ends the run as
    failed, with the reason, and returns.
    """
    from mnist_core.evaluate import evaluate
    from mnist_core.sweeps import should_stop_early
    from mnist_core.train import train

    record = store.get_run(run_id)
    if record is not None and record.status == "queued":
        store.claim(run_id, os.getpid(), HOST)  # unless stopped or claimed elsewhere meanwhile
        record = store.get_run(run_id)
    if record is None or record.status != "running":
        return record.status if record else "failed"
    cancel = cancel or StopSignal(store, run_id)

    def step(event: StepEvent) -> None:
        store.add_steps(run_id, [{
            "step": event.step, "epoch": event.epoch, "loss": event.loss, "accuracy": event.accuracy,
            "lr": event.lr, "images_per_s": event.images_per_s, "elapsed": event.elapsed, "total": event.total,
        }])
        if on_step:
            on_step(event)

    def epoch(event: EpochEvent) -> None:
        store.add_epoch(run_id, {
            "epoch": event.epoch, "train_loss": event.train_loss, "train_accuracy": event.train_accuracy,
            "val_loss": event.val_loss, "val_accuracy": event.val_accuracy,
            "test_loss": event.test_loss, "test_accuracy": event.test_accuracy, "elapsed": event.elapsed,
        })
        store.update_run(run_id, epochs_done=event.epoch)
        if on_epoch:
            on_epoch(event)
        reason = should_stop_early(store, run_id, event.epoch, config.epochs)
        if reason:
            cancel.stop_early(reason)

    try:
        result = (train_function or train)(config, data, on_step=step, on_epoch=epoch, cancel=cancel)
        summary: dict = {"images_per_s": result.images_per_s, "steps": result.steps_done, "bf16": result.mixed_precision}
        fields: dict = {"device": result.device, "duration_s": result.elapsed}
        if result.status == "finished" and result.epochs_done > 0:
            evaluation = evaluate(result.model, data.test_images, data.test_labels)
            store.save_weights(run_id, result.model.state_dict())
            store.save_tensors(run_id, "evaluation", evaluation.tensors())
            summary.update(
                precision=evaluation.precision.tolist(), recall=evaluation.recall.tolist(),
                f1=evaluation.f1.tolist(), parameters=sum(p.numel() for p in result.model.parameters()),
            )
            fields.update(test_accuracy=evaluation.accuracy, test_loss=evaluation.loss)
        store.update_run(run_id, summary=summary, **fields)
    except Exception as err:
        store.update_run(run_id, summary={"traceback": traceback.format_exc(limit=5)})  # for the operator
        store.transition(run_id, "failed", f"{type(err).__name__}: {err}", only_from=["running"])
        return "failed"
    status, message = result.status, result.message
    if status == "cancelled" and cancel.reason == "shutdown":
        status, message = "interrupted", INTERRUPTED
    elif status == "cancelled" and cancel.reason == "early":
        message = cancel.message
    elif status == "finished" and result.epochs_done == 0:
        status = "cancelled"
    store.transition(run_id, status, message, only_from=["running"])
    return status


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


def first_step_soon(store: RunStore, run_id: str, timeout_s: float = 1.0, claim_s: float = 0.3,
                    poll_s: float = 0.05) -> dict | None:
    """The run's first stored step, waited for up to `timeout_s`, so the page that just launched
    it draws the first points in the same script run instead of at a later poll (on a busy
    2-core machine a poll can come seconds later). Gives up after `claim_s` if no trainer has
    taken the run (it waits behind others), and at once if the run has ended."""
    start = time.monotonic()
    while True:
        step = store.last_step(run_id)
        if step is not None:
            return step
        record = store.get_run(run_id)
        waited = time.monotonic() - start
        if (record is None or record.status not in ACTIVE or waited > timeout_s
                or (record.status == "queued" and waited > claim_s)):
            return None
        time.sleep(poll_s)


@dataclass(frozen=True)
class Waiting:
    """A queued run's place in the line and when it should start."""

    run_id: str
    owner: str
    position: int  # 1 = next
    start_in_s: float | None  # None when no throughput has been measured yet
    name: str = ""  # the run's readable name (mnist_core.naming)


class JobQueue:
    """The dashboard's handle on training: submit, stop, waiting line, and warm workers.

    `data` and `train` name the worker's data loader and train function as "module:function",
    so tests inject synthetic data or a failing trainer and still go through the same worker
    processes that production uses.
    """

    def __init__(self, store: RunStore, limits: Limits | None = None, data: str | None = None,
                 train: str | None = None, workers: int | None = None):
        from mnist_core.cluster import start_pool

        self.store = store
        self.limits = limits or Limits.from_env()
        recover(store)
        # Local warm workers, or Ray actors with MNIST_RAY_ADDRESS; `cluster_problem` says why
        # a named cluster is not used.
        self.pool, self.cluster_problem = start_pool(store.root, workers or self.limits.max_concurrent, data, train)

    def submit(self, config: TrainConfig, person: Person) -> Submission:
        """Queue `config` for `person` (who must have a name: runs record their owner)."""
        access.require_name(person)
        submission = submit(self.store, config, person.name, self.limits)
        if submission.outcome == "queued":
            self.pool.wake()
        return submission

    def submit_sweep(self, plan: SweepPlan, person: Person, name: str = "", early_stop: bool = False) -> Launched:
        """Queue every member of a sweep (all or none) and wake the trainers."""
        launched = launch(self.store, plan, person, self.limits, name, early_stop)
        if launched.queued:
            self.pool.wake()
        return launched

    def stop_sweep(self, sweep_id: str, person: Person) -> int:
        return stop_sweep(self.store, sweep_id, person, self.limits)

    def cancel(self, run_id: str, person: Person) -> bool:
        """Stop a queued or running run, whichever process trains it, if `person` owns it or is
        the teacher (access.NotAllowed otherwise); False when it had ended."""
        return access.stop_run(self.store, run_id, person, self.limits)

    def waiting(self) -> list[Waiting]:
        return waiting_line(self.store, self.limits.max_concurrent)

    def place(self, run_id: str) -> Waiting | None:
        """A queued run's place and estimated start, or None when it is not waiting."""
        return next((w for w in self.waiting() if w.run_id == run_id), None)

    def position(self, run_id: str) -> int | None:
        """1-based place in the waiting line, or None when not waiting."""
        place = self.place(run_id)
        return place.position if place else None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the workers (tests and process exit); a run in training ends as interrupted."""
        self.pool.shutdown(timeout)


def queue_table(store: RunStore, trainers: int = 1) -> list[dict[str, str]]:
    """The Train page's queue table: who trains now, then who waits, with estimated starts."""
    from mnist_core.history import format_duration

    rows = [{"place": "training", "who": r.owner, "run": run_name(r.config), "starts": "started"}
            for r in store.list_runs(("running",))]
    rows += [{"place": str(w.position), "who": w.owner, "run": w.name,
              "starts": "not known yet" if w.start_in_s is None else f"in about {format_duration(w.start_in_s)}"}
             for w in waiting_line(store, trainers)]
    return rows


def waiting_line(store: RunStore, trainers: int = 1) -> list[Waiting]:
    """Queued runs with their place and estimated start: the work left on running runs and on
    the runs ahead, at the speed recent runs of the same model were measured to train."""
    speeds = measured_speeds(store)
    busy = [remaining_s(store, r, speeds) for r in store.list_runs(("running",))]
    unknown = any(b is None for b in busy)
    free_at = sorted([b or 0.0 for b in busy] + [0.0] * max(0, trainers - len(busy)))[:max(trainers, 1)]
    line = []
    for position, record in enumerate(store.waiting(), start=1):
        start = free_at.pop(0)  # the trainer that frees up first takes the next run
        line.append(Waiting(record.id, record.owner, position, None if unknown else start, run_name(record.config)))
        duration = planned_s(record.config, speeds)
        unknown = unknown or duration is None
        free_at = sorted(free_at + [start + (duration or 0.0)])
    return line


@dataclass
class Speeds:
    """What finished runs measured: seconds per training image of each model (evaluation
    included), and how many images the training pool holds (before the validation split)."""

    per_image: dict[str, float]
    pool: float | None


def measured_speeds(store: RunStore) -> Speeds:
    """The newest finished run of each model gives its pace; any run gives the pool size
    (steps x batch per epoch, scaled back up by its validation split)."""
    per_image: dict[str, float] = {}
    pool = None
    for record in store.list_runs(("finished",)):
        summary, config = record.summary or {}, record.config
        steps, batch = summary.get("steps"), config.get("batch_size")
        if not steps or not batch or not record.duration_s or not record.epochs_done:
            continue
        images = steps * batch
        per_image.setdefault(config.get("model", ""), record.duration_s / images)
        if pool is None:
            pool = images / record.epochs_done / max(1.0 - config.get("val_split", 0.0), 0.05)
    return Speeds(per_image, pool)


def planned_s(config: dict, speeds: Speeds) -> float | None:
    per_image = speeds.per_image.get(config.get("model", ""))
    if per_image is None or speeds.pool is None:
        return None
    return per_image * config["epochs"] * speeds.pool * (1 - config.get("val_split", 0.0))


def remaining_s(store: RunStore, record: RunRecord, speeds: Speeds) -> float | None:
    """Seconds a running run still needs: from its own pace once it reported, else the estimate."""
    last = store.last_step(record.id)
    if last and last.get("total") and last["step"] > 0 and last.get("elapsed"):
        return last["elapsed"] / last["step"] * max(last["total"] - last["step"], 0)
    return planned_s(record.config, speeds)
