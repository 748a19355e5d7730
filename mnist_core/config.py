"""Training configuration: one typed, validated, hashable description of a run.

The hash is the run's identity: training an identical configuration again returns the stored
run (the dashboard's cached training) instead of spending minutes on the same result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "scratch-sgd")
SCHEDULES = ("none", "step", "plateau", "onecycle")
AUGMENTATIONS = ("none", "affine")
DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A configuration value is out of range; `field` names which one."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class TrainConfig:
    """Every choice that shapes a training run. Defaults give a quick, sound CNN run."""

    model: str = "cnn-small"
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    dropout: float = 0.0
    schedule: str = "none"
    augment: str = "none"
    val_split: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    time_budget_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # reserved; must stay empty

    def __post_init__(self) -> None:
        validate(self)
        # One spelling per value: epochs=1.0 and epochs=1 are one run, with one id.
        for name, (_, _, kind) in RANGES.items():
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.time_budget_s is not None:
            object.__setattr__(self, "time_budget_s", float(self.time_budget_s))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (a stored run, a form); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting; known: {', '.join(sorted(names))}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def config_hash(self) -> str:
        """A stable 12-hex-digit digest of every field (independent of field order)."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# (field, low, high, type). Ranges are what trains at all, not what trains well.
RANGES: dict[str, tuple[float, float, type]] = {
    "epochs": (1, 100, int),
    "batch_size": (1, 8192, int),
    "lr": (1e-7, 10.0, float),
    "momentum": (0.0, 0.999, float),
    "weight_decay": (0.0, 1.0, float),
    "dropout": (0.0, 0.9, float),
    "val_split": (0.0, 0.5, float),
    "seed": (0, 2**31 - 1, int),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "augment": AUGMENTATIONS,
    "device": DEVICES,
    "precision": PRECISIONS,
}


def validate(config: TrainConfig) -> None:
    """Raise ConfigError naming the first field that is out of range."""
    from mnist_core.models import MODELS  # late import: models imports nothing from here

    if config.model not in MODELS:
        raise ConfigError("model", f"{config.model!r} is not one of {', '.join(MODELS)}")
    for name, (low, high, kind) in RANGES.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"must be a number, got {value!r}")
        if kind is int and value != int(value):
            raise ConfigError(name, f"must be a whole number, got {value!r}")
        if not (low <= value <= high) or value != value:
            raise ConfigError(name, f"{value!r} is outside the allowed range {low}..{high}")
    for name, options in CHOICES.items():
        if getattr(config, name) not in options:
            raise ConfigError(name, f"{getattr(config, name)!r} is not one of {', '.join(options)}")
    if config.optimizer == "scratch-sgd" and config.model not in ("linear", "mlp"):
        raise ConfigError("optimizer", "scratch-sgd (hand-written SGD) is offered for linear and mlp")
    budget = config.time_budget_s
    if budget is not None and (not isinstance(budget, (int, float)) or not 1 <= budget <= 86400):
        raise ConfigError("time_budget_s", f"{budget!r} must be empty or 1..86400 seconds")
    if config.extra:
        raise ConfigError("extra", "must be empty")


class SettingError(ValueError):
    """A deployment setting (environment variable) has a value this code does not accept."""

    def __init__(self, variable: str, message: str):
        super().__init__(f"{variable}: {message}")
        self.variable = variable


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def env_whole(name: str, default: int, low: int = 1, high: int = 1_000_000) -> int:
    """A whole-number setting; a value that is not one, or out of range, is an error naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(name, f"must be a whole number from {low} to {high}, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingError(name, f"must be from {low} to {high}, got {value}")
    return value


def env_flag(name: str) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off (or unset); anything else is an error."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise SettingError(name, f"must be one of 1/true/yes/on or 0/false/no/off, got {os.environ[name]!r}")


@dataclass(frozen=True)
class Limits:
    """Caps for a shared deployment, read from environment variables (see README).

    Waiting runs are counted per person (by owner, in the store, whatever tab or server they
    used) and per server, so reloading a tab or opening four does not reset a limit."""

    max_epochs: int = 100
    max_batch_size: int = 8192
    max_queued_per_person: int = 3
    max_queued_total: int = 100  # room for a full sweep next to a class's single runs
    max_concurrent: int = 1
    max_sweep: int = 64
    read_only: bool = False

    @classmethod
    def from_env(cls) -> Limits:
        """The deployment's caps; raises SettingError naming the first variable with a bad value."""
        per_person = "MNIST_MAX_QUEUED_PER_PERSON"
        if not os.environ.get(per_person, "").strip() and os.environ.get("MNIST_MAX_QUEUED_PER_SESSION", "").strip():
            per_person = "MNIST_MAX_QUEUED_PER_SESSION"  # the earlier name, still understood
        return cls(
            max_epochs=env_whole("MNIST_MAX_EPOCHS", cls.max_epochs, 1, 1000),
            max_batch_size=env_whole("MNIST_MAX_BATCH_SIZE", cls.max_batch_size, 1, 65536),
            max_queued_per_person=env_whole(per_person, cls.max_queued_per_person, 1, 1000),
            max_queued_total=env_whole("MNIST_MAX_QUEUED", cls.max_queued_total, 1, 10000),
            max_concurrent=env_whole("MNIST_MAX_CONCURRENT_TRAININGS", cls.max_concurrent, 1, 64),
            max_sweep=env_whole("MNIST_MAX_SWEEP", cls.max_sweep, 1, 10000),
            read_only=env_flag("MNIST_READ_ONLY"),
        )

    def check(self, config: TrainConfig) -> None:
        """Raise ConfigError when a config exceeds this deployment's caps."""
        if self.read_only:
            raise ConfigError("training", "this deployment is a read-only demo; training is off")
        if config.epochs > self.max_epochs:
            raise ConfigError("epochs", f"{config.epochs} exceeds this deployment's limit of {self.max_epochs}")
        if config.batch_size > self.max_batch_size:
            raise ConfigError(
                "batch_size", f"{config.batch_size} exceeds this deployment's limit of {self.max_batch_size}"
            )


def check_settings() -> None:
    """Read every deployment setting once, so that a wrong value stops the server at once with
    a SettingError naming the variable, instead of silently meaning something else."""
    from mnist_core.workers import default_nice, default_threads  # late: workers imports this module

    from mnist_core.cluster import ray_address

    limits = Limits.from_env()
    default_threads(limits.max_concurrent)
    default_nice()
    ray_address()


@dataclass(frozen=True)
class Recipe:
    """A tuned starting point: the settings, and what they are for in a visitor's words."""

    config: TrainConfig
    purpose: str


# Offered by the Train page and measured by `python -m mnist_core.bench` (figures on a 2-core CPU
# without bf16; see the README). The first recipe is the fastest route to 99% (the bench times
# it). Every recipe keeps the default validation split so the Train page can show overfitting.
RECIPES: dict[str, Recipe] = {
    "cnn-sprint": Recipe(
        TrainConfig(model="cnn-sprint", epochs=1, batch_size=128, lr=2e-2, schedule="onecycle"),
        "The fastest recipe: 99% test accuracy in one epoch, about 5 s on two CPU cores."),
    "cnn-fast": Recipe(
        TrainConfig(model="cnn-fast", epochs=3, batch_size=128, lr=3e-3, schedule="onecycle"),
        "Three epochs of a slightly bigger network: about 99.1%."),
    "cnn-best": Recipe(
        TrainConfig(model="cnn-best", epochs=12, batch_size=128, lr=3e-3, schedule="onecycle",
                    augment="affine", dropout=0.25),
        "Twelve epochs with augmentation: the most accurate, about 99.7%, in about 7 minutes on two CPU cores."),
}
