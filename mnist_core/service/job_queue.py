"""The dashboard's one handle on training: submit, stop, the waiting line, and the trainers
(local warm workers, or Ray actors when MNIST_RAY_ADDRESS names a cluster)."""

from __future__ import annotations

from mnist_core.engine.config import TrainConfig
from mnist_core.service import access
from mnist_core.service.access import Person
from mnist_core.service.cluster import start_pool
from mnist_core.service.jobs import Submission, submit
from mnist_core.service.lifecycle import recover
from mnist_core.service.store import RunStore
from mnist_core.service.sweeps import Launched, SweepPlan, launch
from mnist_core.service.sweeps import stop as stop_sweep
from mnist_core.service.waiting import Waiting, waiting_line
from mnist_core.settings import Limits


class JobQueue:
    """The dashboard's handle on training: submit, stop, waiting line, and warm workers.

    `data` and `train` name the worker's data loader and train function as "module:function",
    so tests inject synthetic data or a failing trainer and still go through the same worker
    processes that production uses.
    """

    def __init__(self, store: RunStore, limits: Limits | None = None, data: str | None = None,
                 train: str | None = None, workers: int | None = None):
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
