"""Sweeps: several values per setting, launched together as one named set of ordinary runs.

Each member is a normal cached run (its id is its config's hash), so a member trained before,
by anyone, is reused at once, and a sweep is only a list of run ids plus what was swept. The
explorer moves one setting at a time along exactly the values that were swept; successive
halving (ASHA's rule) may stop hopeless members after an epoch, on any backend.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnist_core.service import access
from mnist_core.service.access import Person
from mnist_core.engine.config import CHOICES, RANGES, TrainConfig
from mnist_core.settings import ConfigError, Limits
from mnist_core.engine.models import MODELS
from mnist_core.engine.naming import run_name, setting_text
from mnist_core.service.lifecycle import current, recover, run_id_for
from mnist_core.service.store import ACTIVE, QueueFull, RunRecord, RunStore, SweepMember, SweepRecord

if TYPE_CHECKING:
    import pandas as pd

# What a sweep may vary, in the order the form and the explorer show them.
SWEEPABLE = ("model", "lr", "batch_size", "epochs", "optimizer", "schedule", "dropout", "weight_decay",
             "augment", "seed")
LABELS = {
    "model": "Model", "lr": "Learning rate", "batch_size": "Batch size", "epochs": "Epochs",
    "optimizer": "Optimizer", "schedule": "Schedule", "dropout": "Dropout", "weight_decay": "Weight decay",
    "augment": "Augmentation", "seed": "Seed",
}
MODES = ("grid", "random")
HALVING_RATE = 2  # ASHA's eta: at each rung (epochs 1, 2, 4, ...) the better half goes on
MAX_ACTIVE_SWEEPS = 1  # per person, so one visitor cannot fill the server's queue with sweeps
NAME_PATTERN = re.compile(r"[^\W_](?:(?:[^\W_]|[ .'-])*[^\W_])?")
NAME_MAX = 48
MAX_VALUES = 10_000  # values of one setting: as many members as the largest MNIST_MAX_SWEEP allows


def parse_values(key: str, text: str) -> list[Any]:
    """'1e-3, 3e-3, 1e-2' -> [0.001, 0.003, 0.01]: typed, each in range, duplicates dropped.
    Raises ConfigError naming the setting for an empty list or a value it cannot take."""
    if key not in SWEEPABLE:
        raise ConfigError(key, f"cannot be swept; choose from {', '.join(SWEEPABLE)}")
    words = [w.strip() for w in str(text).replace(";", ",").split(",")]
    words = [w for w in words if w]
    if not words:
        raise ConfigError(key, "give at least one value")
    return check_values(key, words)


def check_values(key: str, raw: list[Any]) -> list[Any]:
    """Values for one swept setting, converted to its type and checked against its range."""
    if key not in SWEEPABLE:
        raise ConfigError(key, f"cannot be swept; choose from {', '.join(SWEEPABLE)}")
    if not raw:
        raise ConfigError(key, "give at least one value")
    if len(raw) > MAX_VALUES:  # before any work on them: a million values would take minutes
        raise ConfigError(key, f"{len(raw):,} values; a sweep takes at most {MAX_VALUES:,} per setting")
    values: list[Any] = []
    seen: set[Any] = set()
    for word in raw:
        if key in RANGES:
            low, high, kind = RANGES[key]
            try:
                number = float(word)
            except (TypeError, ValueError):
                raise ConfigError(key, f"{str(word)[:20]!r} is not a number") from None
            if not math.isfinite(number) or not low <= number <= high:
                raise ConfigError(key, f"{number:g} is outside the allowed range {low:g}..{high:g}")
            if kind is int and number != int(number):
                raise ConfigError(key, f"{number:g} must be a whole number")
            value: Any = kind(number)
        else:
            options = MODELS if key == "model" else CHOICES[key]
            value = str(word)
            if value not in options:
                raise ConfigError(key, f"{value[:20]!r} is not one of {', '.join(options)}")
        if value not in seen:
            seen.add(value)
            values.append(value)
    return values


def clean_sweep_name(raw: object) -> str:
    name = " ".join(str(raw or "").split())
    if not name:
        return ""
    if len(name) > NAME_MAX or not NAME_PATTERN.fullmatch(name):
        raise ConfigError("name", f"a sweep name is 1-{NAME_MAX} letters, digits, spaces and . - '")
    return name


@dataclass(frozen=True)
class SweepPlan:
    """What to sweep: a base config, the values of each swept setting, grid or random samples."""

    base: TrainConfig
    axes: dict[str, list[Any]] = field(default_factory=dict)
    mode: str = "grid"
    samples: int = 8
    sample_seed: int = 0

    def __post_init__(self) -> None:
        # One order everywhere (form, sliders, names): SWEEPABLE's, whatever order they came in.
        ordered = {k: list(self.axes[k]) for k in SWEEPABLE if k in self.axes}
        ordered.update({k: v for k, v in self.axes.items() if k not in ordered})  # refused by members()
        object.__setattr__(self, "axes", ordered)

    def size(self) -> int:
        grid = math.prod(len(v) for v in self.axes.values())
        return grid if self.mode == "grid" else min(self.samples, grid)

    def members(self, limit: int) -> list[tuple[dict[str, Any], TrainConfig]]:
        """(swept values, config) per member, in grid order; ConfigError past `limit` members
        or for a combination the engine cannot train (naming it)."""
        if not self.axes:
            raise ConfigError("sweep", "choose at least one setting to vary")
        for key, values in self.axes.items():
            check_values(key, values)
        if self.mode not in MODES:
            raise ConfigError("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "random" and not 1 <= self.samples <= limit:
            raise ConfigError("samples", f"choose 1 to {limit} random members")
        size = self.size()
        if size > limit:
            raise ConfigError("sweep", f"{size} members is more than this deployment allows in one sweep "
                                       f"({limit}); choose fewer values or random samples")
        keys = list(self.axes)
        points = list(itertools.product(*self.axes.values()))
        if self.mode == "random" and size < len(points):
            chosen = sorted(random.Random(self.sample_seed).sample(range(len(points)), size))
            points = [points[i] for i in chosen]
        members = []
        for point in points:
            params = dict(zip(keys, point))
            try:
                config = self.base.replace(**params)
            except ConfigError as err:
                raise ConfigError(err.field, f"{err} (in the member {describe(params)})") from None
            members.append((params, config))
        return members

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "axes": self.axes, "mode": self.mode, "samples": self.samples,
                "sample_seed": self.sample_seed}


def describe(params: dict[str, Any]) -> str:
    return " · ".join(setting_text(k, v) for k, v in params.items()) or "the base settings"


@dataclass
class Launched:
    sweep_id: str
    outcomes: dict[str, str]  # run id -> "cached", "joined" or "queued"

    @property
    def queued(self) -> int:
        return sum(o == "queued" for o in self.outcomes.values())


def launch(store: RunStore, plan: SweepPlan, person: Person, limits: Limits, name: str = "",
           early_stop: bool = False) -> Launched:
    """Queue every member of `plan` for `person` in one transaction: all or nothing.

    Raises ConfigError (bad values, too many members, a member past this deployment's caps, a
    full queue) or access.NotAllowed (read-only, anonymous) before anything is queued.
    """
    access.require_writable(limits, "sweeps")
    access.require_name(person)
    members = plan.members(limits.max_sweep)
    for _, config in members:
        limits.check(config)
    name = clean_sweep_name(name) or default_name(plan)
    rows = []
    for params, config in members:
        run_id = run_id_for(config)
        recover(store, run_id)  # a member left active by a dead process is trained again
        rows.append((run_id, config.to_dict(), params))
    sweep_id = f"sweep-{secrets.token_hex(5)}"
    try:
        outcomes = store.create_sweep(sweep_id, name, person.name, plan.to_dict(), rows, early_stop,
                                      max_total=limits.max_queued_total, max_active_per_owner=MAX_ACTIVE_SWEEPS)
    except QueueFull as err:
        raise ConfigError("queue", str(err)) from None
    return Launched(sweep_id, outcomes)


def default_name(plan: SweepPlan) -> str:
    return f"{plan.base.model} " + " x ".join(LABELS[k].lower() for k in plan.axes)


@dataclass
class SweepState:
    """A sweep as it stands: its members' runs, how many ended, the best so far."""

    sweep: SweepRecord
    members: list[SweepMember]
    runs: dict[str, RunRecord]  # run id -> record (members whose run was deleted are absent)

    @property
    def total(self) -> int:
        return len(self.members)

    @property
    def finished(self) -> int:
        return sum(self.status(m) == "finished" for m in self.members)

    @property
    def ended(self) -> int:
        return sum(self.status(m) not in ACTIVE for m in self.members)

    @property
    def active(self) -> bool:
        return any(self.status(m) in ACTIVE for m in self.members)

    def status(self, member: SweepMember) -> str:
        record = self.runs.get(member.run_id)
        if record is None:
            return "deleted"
        if member.early_stopped and record.status == "cancelled":
            return "stopped early"
        return record.status

    def best(self) -> SweepMember | None:
        scored = [m for m in self.members if self.status(m) == "finished"
                  and self.runs[m.run_id].test_accuracy is not None]
        return max(scored, key=lambda m: self.runs[m.run_id].test_accuracy, default=None)

    def swept(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self.sweep.spec.get("axes", {}).items()}

    def label(self, member: SweepMember) -> str:
        return describe(member.params)

    def find(self, params: dict[str, Any]) -> SweepMember | None:
        return next((m for m in self.members if m.params == params), None)


def state(store: RunStore, sweep_id: str) -> SweepState:
    sweep = store.get_sweep(sweep_id)
    if sweep is None:
        raise ConfigError("sweep", "no such sweep (it may have been cleared)")
    members = store.sweep_members(sweep_id)
    runs = {}
    for member in members:
        record = current(store, member.run_id)
        if record is not None:
            runs[member.run_id] = record
    return SweepState(sweep, members, runs)


def stop(store: RunStore, sweep_id: str, person: Person, limits: Limits) -> int:
    """Stop every member still queued or running that `person` may stop (their own runs; the
    teacher any). Members shared with someone else's run keep training for them. Returns how
    many were stopped."""
    sweep = store.get_sweep(sweep_id)
    if sweep is None:
        raise ConfigError("sweep", "no such sweep")
    access.require_writable(limits, "stopping a sweep")
    if not access.may_act_for(person, sweep.owner):
        raise access.NotAllowed("only the person who launched this sweep, or the teacher, may stop it")
    stopped = 0
    for member in store.sweep_members(sweep_id):
        record = store.get_run(member.run_id)
        if record is not None and record.status in ACTIVE and access.may_manage(person, record):
            stopped += store.request_stop(member.run_id)
    store.mark_sweep_stopped(sweep_id)
    return stopped


def may_stop(person: Person, sweep_state: SweepState, limits: Limits) -> bool:
    """Whether to offer `person` the Stop button: what `stop` would allow, and something to stop."""
    return sweep_state.active and not limits.read_only and access.may_act_for(person, sweep_state.sweep.owner)


def should_stop_early(store: RunStore, run_id: str, epoch: int, epochs: int) -> str | None:
    """Asynchronous successive halving: at a rung (epoch 1, 2, 4, ... before the last), a member
    of an early-stopping sweep goes on only if its validation accuracy is in the better half of
    what the members that reached this rung scored there. Returns the reason to stop, or None."""
    if epoch >= epochs or epoch & (epoch - 1):  # not a rung (a power of two), or the end anyway
        return None
    for sweep in store.sweeps_of_run(run_id):
        if not sweep.early_stop:
            continue
        scores = store.epoch_metric(sweep.id, epoch)
        mine = scores.get(run_id)
        if mine is None or len(scores) < HALVING_RATE:
            continue
        ranked = sorted(scores.values(), reverse=True)
        keep = max(1, len(ranked) // HALVING_RATE)
        if mine < ranked[keep - 1]:
            store.mark_early_stopped(sweep.id, run_id)
            return (f"Stopped early by successive halving: after epoch {epoch} its accuracy "
                    f"{mine:.2%} was below the better half of the {len(ranked)} members of the "
                    f"sweep that got there (cut-off {ranked[keep - 1]:.2%}).")
    return None


def member_names(sweep_state: SweepState) -> dict[str, str]:
    """Run id -> the member's name: the model and its swept values."""
    always = tuple(sweep_state.swept())
    return {m.run_id: run_name(sweep_state.runs[m.run_id].config, always) if m.run_id in sweep_state.runs
            else describe(m.params) for m in sweep_state.members}


# -- the slider explorer ----------------------------------------------------------------------


def members_frame(sweep_state: SweepState) -> pd.DataFrame:
    """One row per member: run id, name, status, test accuracy, time, and each swept value."""
    import pandas as pd  # only for the explorer's table, not for launching a sweep

    names = member_names(sweep_state)
    rows = []
    for member in sweep_state.members:
        record = sweep_state.runs.get(member.run_id)
        rows.append({
            "run_id": member.run_id, "name": names[member.run_id], "status": sweep_state.status(member),
            "test_accuracy": record.test_accuracy if record else None,
            "duration_s": record.duration_s if record else None, **member.params,
        })
    return pd.DataFrame(rows)


def neighbours(sweep_state: SweepState, params: dict[str, Any], axis: str) -> list[SweepMember]:
    """Members equal to `params` in every swept setting but `axis`: the runs to draw faint."""
    return [m for m in sweep_state.members
            if m.params.get(axis) != params.get(axis)
            and all(m.params.get(k) == v for k, v in params.items() if k != axis)]


def difference(params: dict[str, Any], others: list[SweepMember], axis: str) -> str:
    """A sentence saying what the faint curves are and what alone differs."""
    shown = describe(params)
    if not others:
        return f"Showing {shown}. No other member differs from it in {LABELS[axis].lower()} alone."
    values = ", ".join(setting_text(axis, m.params[axis]) for m in others)
    return (f"Showing {shown}. Faint: {values}: the same settings except the "
            f"{LABELS[axis].lower()}, so any difference between the curves comes from it (and chance).")


def accuracy_grid(frame: pd.DataFrame, x: str, y: str, fixed: dict[str, Any]) -> pd.DataFrame:
    """Test accuracy with `y` down and `x` across, the other swept settings held at `fixed`
    (the sliders' values); a cell is empty where that member has not finished."""
    rows = frame
    for key, value in fixed.items():
        if key not in (x, y) and key in rows:
            rows = rows[rows[key] == value]
    table = rows.pivot_table(index=y, columns=x, values="test_accuracy", aggfunc="mean", dropna=False)
    return table.reindex(index=sorted(frame[y].unique()), columns=sorted(frame[x].unique()))
