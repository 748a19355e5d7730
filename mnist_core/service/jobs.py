"""A run's life: submitted, claimed, trained, recorded, stopped (lifecycle.py recovers it).

The waiting line is the run store itself (queued rows, claimed by compare-and-set), so every
server process that shares one store sees one queue and no run is ever trained twice. Training
never runs inside the web server: warm worker processes (mnist_core.service.workers) claim queued runs
and call `execute`, which is also what the CLI calls, so every run fills the store the same way.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from mnist_core.engine.config import TrainConfig
from mnist_core.engine.data import Mnist
from mnist_core.engine.evaluate import evaluate
from mnist_core.engine.train import EpochEvent, StepEvent, TrainResult, train
from mnist_core.service import access
from mnist_core.service.lifecycle import HOST, INTERRUPTED, recover, run_id_for
from mnist_core.service.store import ACTIVE, QueueFull, RunStore
from mnist_core.service.sweeps import should_stop_early
from mnist_core.settings import ConfigError, Limits

STOP_CHECK_S = 0.25  # how often a trainer looks at the store for a stop request

TrainFunction = Callable[..., TrainResult]


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
            evaluation = evaluate(result.model, data.test_images, data.test_labels, data.dataset)
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


