"""Background training: a bounded job queue shared by every browser session of one server.

Training never runs inside a page's script run: a worker thread owns it, writes every event to
the run store, and keeps going when the browser tab closes. Pages only submit, poll and cancel.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from mnist_core.config import ConfigError, Limits, TrainConfig
from mnist_core.data import DataError, Mnist, load_mnist
from mnist_core.evaluate import evaluate
from mnist_core.runs import ACTIVE, RunStore
from mnist_core.train import EpochEvent, StepEvent, train

TERMINAL_REUSABLE = ("finished", "diverged")  # outcomes that identical configs simply reuse


def run_id_for(config: TrainConfig) -> str:
    """A run's id: the model name (for people) plus the config hash (for identity)."""
    return f"{config.model}-{config.config_hash()}"


def execute(
    store: RunStore,
    run_id: str,
    config: TrainConfig,
    data: Mnist,
    cancel: threading.Event | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    on_epoch: Callable[[EpochEvent], None] | None = None,
) -> str:
    """Train one stored run to its end, recording everything; returns the final status.

    Used by the queue's workers and by the CLI, so both fill the store the same way.
    """
    if not store.transition(run_id, "running", only_from=["queued"]):
        record = store.get_run(run_id)
        return record.status if record else "failed"  # cancelled meanwhile, or claimed elsewhere
    store.update_run(run_id, summary={"pid": os.getpid()})

    def step(event: StepEvent) -> None:
        store.add_steps(run_id, [{
            "step": event.step, "epoch": event.epoch, "loss": event.loss, "accuracy": event.accuracy,
            "lr": event.lr, "images_per_s": event.images_per_s, "elapsed": event.elapsed,
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

    try:
        result = train(config, data, on_step=step, on_epoch=epoch, cancel=cancel)
    except Exception as err:  # any crash ends the run as failed; the worker goes on
        store.update_run(run_id, summary={"traceback": traceback.format_exc(limit=5)})
        store.transition(run_id, "failed", f"{type(err).__name__}: {err}", only_from=["running"])
        return "failed"
    summary: dict = {
        "images_per_s": result.images_per_s, "steps": result.steps_done, "bf16": result.mixed_precision,
        "pid": os.getpid(),
    }
    if result.status == "finished" and result.epochs_done > 0:
        evaluation = evaluate(result.model, data.test_images, data.test_labels)
        store.save_weights(run_id, result.model.state_dict())
        store.save_tensors(run_id, "evaluation", evaluation.tensors())
        summary.update(
            precision=evaluation.precision.tolist(), recall=evaluation.recall.tolist(),
            f1=evaluation.f1.tolist(), parameters=sum(p.numel() for p in result.model.parameters()),
        )
        store.update_run(
            run_id, device=result.device, test_accuracy=evaluation.accuracy, test_loss=evaluation.loss,
            duration_s=result.elapsed, summary=summary,
        )
    else:
        store.update_run(run_id, device=result.device, duration_s=result.elapsed, summary=summary)
    status = result.status if result.epochs_done > 0 or result.status != "finished" else "cancelled"
    store.transition(run_id, status, result.message, only_from=["running"])
    return status


def prepare_run(store: RunStore, run_id: str, config: TrainConfig) -> None:
    """Make the stored run of `config` fresh, queued and owned by this process: created, or
    reset after an earlier cancelled, interrupted or failed attempt."""
    if store.get_run(run_id) is None:
        store.create_run(run_id, config.to_dict())
    else:
        store.reset_run(run_id, config.to_dict())
    store.update_run(run_id, summary={"pid": os.getpid()})


@dataclass
class Submission:
    run_id: str
    outcome: str  # "cached" (already trained), "joined" (same config already queued/running), "queued"


class JobQueue:
    """A FIFO of training jobs run by `limits.max_concurrent` workers.

    With `load_data=None` (the dashboard) every job trains in a child process that loads MNIST
    itself: a web server busy drawing pages for many visitors holds Python's GIL most of the
    time, and a training thread inside it would crawl. Given a loader (tests, synthetic data),
    jobs train in the worker thread on that data.
    """

    def __init__(self, store: RunStore, load_data: Callable[[], Mnist] | None = None, limits: Limits | None = None):
        self.store = store
        self.load_data = load_data
        self.limits = limits or Limits.from_env()
        self._context = None if load_data is not None else multiprocessing.get_context("forkserver")
        if self._context is not None:
            self._context.set_forkserver_preload(["mnist_core.jobs"])  # torch imported once, not per job
        self._queue: queue.Queue[tuple[str, TrainConfig] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: list[str] = []  # queued run ids in order
        self._owners: dict[str, set[str]] = {}  # run id -> session ids that asked for it
        self._cancel: dict[str, threading.Event] = {}
        self._progress: dict[str, StepEvent] = {}  # latest live event of in-thread jobs
        recover_interrupted(store)
        self._workers = [
            threading.Thread(target=self._work, name=f"mnist-trainer-{i}", daemon=True)
            for i in range(self.limits.max_concurrent)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, config: TrainConfig, session_id: str = "cli") -> Submission:
        """Queue `config` unless an identical run exists; raises ConfigError past the limits."""
        self.limits.check(config)
        run_id = run_id_for(config)
        with self._lock:
            record = self.store.get_run(run_id)
            if record is not None and record.status in TERMINAL_REUSABLE:
                return Submission(run_id, "cached")
            if record is not None and run_id in self._cancel:  # queued or running here
                self._owners.setdefault(run_id, set()).add(session_id)
                return Submission(run_id, "joined")
            if record is not None and record.active:  # being trained by another live process (a CLI)
                return Submission(run_id, "joined")
            mine = sum(1 for rid in self._pending if session_id in self._owners.get(rid, set()))
            if mine >= self.limits.max_queued_per_session:
                raise ConfigError(
                    "queue", f"you already have {mine} runs waiting (limit {self.limits.max_queued_per_session}); "
                    "wait for one to start or stop one"
                )
            prepare_run(self.store, run_id, config)
            self._owners[run_id] = {session_id}
            self._cancel[run_id] = self._context.Event() if self._context else threading.Event()
            self._pending.append(run_id)
            self._queue.put((run_id, config))
        return Submission(run_id, "queued")

    def cancel(self, run_id: str) -> bool:
        """Ask a queued or running job to stop; False when it is not active here."""
        with self._lock:
            event = self._cancel.get(run_id)
            if event is None:
                return False
            event.set()
            if run_id in self._pending:  # never started: end it now
                self._pending.remove(run_id)
                self.store.transition(run_id, "cancelled", "Stopped before it started.", only_from=["queued"])
        return True

    def position(self, run_id: str) -> int | None:
        """1-based place in the waiting line, or None when not waiting."""
        with self._lock:
            return self._pending.index(run_id) + 1 if run_id in self._pending else None

    def progress(self, run_id: str) -> StepEvent | None:
        """The latest step of a job training in this process; None for child-process jobs,
        whose progress is read from the store's steps instead."""
        return self._progress.get(run_id)

    def active(self) -> list[str]:
        with self._lock:
            return list(self._cancel)

    def is_active(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._cancel

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the workers (tests and process exit)."""
        with self._lock:
            for event in self._cancel.values():
                event.set()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            run_id, config = item
            with self._lock:
                if run_id not in self._pending:  # cancelled while waiting
                    self._cleanup(run_id)
                    continue
                self._pending.remove(run_id)
                cancel = self._cancel[run_id]
            try:
                if self._context is not None:
                    self._run_in_child(run_id, config, cancel)
                else:
                    execute(self.store, run_id, config, self.load_data(), cancel,
                            on_step=lambda event, rid=run_id: self._record(rid, event))
            except Exception as err:  # data missing or store failure: end this job, keep serving
                self.store.transition(run_id, "failed", f"{type(err).__name__}: {err}", only_from=["queued", "running"])
            finally:
                with self._lock:
                    self._cleanup(run_id)

    def _run_in_child(self, run_id: str, config: TrainConfig, cancel) -> None:
        """Train in a child process and wait for it; a child that dies marks its run failed.

        The child is a daemon: a server that shuts down ends it (its run is then recovered as
        interrupted at the next start), while one killed outright leaves it to finish its run.
        """
        process = self._context.Process(
            target=train_in_child, args=(str(self.store.root), run_id, config.to_dict(), cancel),
            name=f"mnist-train-{run_id}", daemon=True,
        )
        process.start()
        process.join()
        if process.exitcode != 0:
            self.store.transition(
                run_id, "failed", f"The training process ended unexpectedly (exit code {process.exitcode}).",
                only_from=["queued", "running"],
            )

    def _record(self, run_id: str, event: StepEvent) -> None:
        self._progress[run_id] = event

    def _cleanup(self, run_id: str) -> None:
        self._cancel.pop(run_id, None)
        self._owners.pop(run_id, None)
        self._progress.pop(run_id, None)


def train_in_child(store_root: str, run_id: str, config: dict, cancel) -> None:
    """Entry point of a training process: load MNIST and the store, then `execute`."""
    store = RunStore(store_root)
    try:
        data = load_mnist(allow_download=False)
    except DataError as err:
        store.transition(run_id, "failed", str(err), only_from=["queued", "running"])
        return
    execute(store, run_id, TrainConfig.from_dict(config), data, cancel)


def recover_interrupted(store: RunStore) -> int:
    """Mark runs left queued/running by a process that no longer exists as interrupted.

    A run owned by a live process (say a CLI training beside the dashboard) is left alone.
    """
    count = 0
    for record in store.list_runs(ACTIVE):
        pid = record.summary.get("pid") if record.summary else None
        if pid and pid != os.getpid() and pid_alive(pid):
            continue
        # Compare-and-set: a run that ended between the listing and now keeps its outcome.
        count += store.transition(
            record.id, "interrupted", "The server stopped before this run finished; launch it again.",
            only_from=ACTIVE,
        )
    return count


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
