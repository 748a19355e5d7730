"""The waiting line as visitors see it: each queued run's place and estimated start.

Estimates come from what finished runs measured (seconds per training image of each model), so
they need no configuration and improve as a class trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnist_core.engine.naming import run_name
from mnist_core.service.history import format_duration
from mnist_core.service.store import RunRecord, RunStore


@dataclass(frozen=True)
class Waiting:
    """A queued run's place in the line and when it should start."""

    run_id: str
    owner: str
    position: int  # 1 = next
    start_in_s: float | None  # None when no throughput has been measured yet
    name: str = ""  # the run's readable name (mnist_core.engine.naming)


def queue_table(store: RunStore, trainers: int = 1) -> list[dict[str, str]]:
    """The Train page's queue table: who trains now, then who waits, with estimated starts."""
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


def place_text(place: Waiting) -> str:
    """A queued run's place in words: its position, how many are ahead, and when it should start."""
    ahead = "it is next" if place.position == 1 else f"{place.position - 1} run(s) ahead of it"
    start = f" Estimated start: in about {format_duration(place.start_in_s)}." if place.start_in_s is not None else ""
    return f"Waiting in the queue: position {place.position} ({ahead}).{start}"
