"""Training configuration: one typed, validated, hashable description of a run.

The hash is the run's identity: training an identical configuration again returns the stored
run (the dashboard's cached training) instead of spending minutes on the same result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from mnist_core.engine.datasets import DATASETS, DEFAULT
from mnist_core.engine.models import MODELS
from mnist_core.settings import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "scratch-sgd")
SCHEDULES = ("none", "step", "plateau", "onecycle")
AUGMENTATIONS = ("none", "affine")
DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")


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
    dataset: str = DEFAULT  # a datasets.DATASETS name; MNIST unless a second dataset is registered

    def __post_init__(self) -> None:
        validate(self)
        # One spelling per value: epochs=1.0 and epochs=1 are one run, with one id, and so are
        # dropout -0.0 and 0.0 (adding 0.0 turns a negative zero into zero, nothing else).
        for name, (_, _, kind) in RANGES.items():
            object.__setattr__(self, name, kind(getattr(self, name)) + kind(0))
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
        """A stable 12-hex-digit digest of every field (independent of field order). The default
        dataset is left out, so runs stored before datasets had a name keep their ids."""
        values = self.to_dict()
        if values["dataset"] == DEFAULT:
            del values["dataset"]
        payload = json.dumps(values, sort_keys=True, separators=(",", ":"))
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
    for name in ("model", "dataset", *CHOICES):  # a list or a dict from a form or a link is no name
        if not isinstance(getattr(config, name), str):
            raise ConfigError(name, f"must be a name, got {type(getattr(config, name)).__name__}")
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
    if config.dataset not in DATASETS:
        raise ConfigError("dataset", f"{config.dataset!r} is not one of {', '.join(DATASETS)}")


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
