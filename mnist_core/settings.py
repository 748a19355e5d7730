"""Every `MNIST_*` environment variable, read and checked in one place.

A deployment is configured by environment variables (the README's Configuration table). Each one
is read here, by a function named after what it sets, so a wrong value stops the server at once
with a SettingError naming the variable instead of silently meaning something else, and a
newcomer finds every knob in one file. Nothing here imports torch or another wing: every wing
may read its settings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")
RAY_ADDRESS = re.compile(r"(?:ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}")


class SettingError(ValueError):
    """A deployment setting (environment variable) has a value this code does not accept."""

    def __init__(self, variable: str, message: str):
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class ConfigError(ValueError):
    """A value someone chose (a form field, a CLI flag) is out of range; `field` names which one."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


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


def env_flag(name: str, default: bool = False) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off (unset: `default`); anything else is an
    error."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise SettingError(name, f"must be one of 1/true/yes/on or 0/false/no/off, got {os.environ[name]!r}")


class Sized(Protocol):
    """What the caps look at in a training configuration."""

    epochs: int
    batch_size: int


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

    def check(self, config: Sized) -> None:
        """Raise ConfigError when a config exceeds this deployment's caps."""
        if self.read_only:
            raise ConfigError("training", "this deployment is a read-only demo; training is off")
        if config.epochs > self.max_epochs:
            raise ConfigError("epochs", f"{config.epochs} exceeds this deployment's limit of {self.max_epochs}")
        if config.batch_size > self.max_batch_size:
            raise ConfigError(
                "batch_size", f"{config.batch_size} exceeds this deployment's limit of {self.max_batch_size}"
            )


# -- where things are ------------------------------------------------------------------------------


def data_dir() -> str | None:
    """MNIST_DATA_DIR: a folder holding the four IDX files (None when unset)."""
    return os.environ.get("MNIST_DATA_DIR") or None


def cache_dir() -> Path:
    """MNIST_CACHE_DIR: the project's own data cache, else ./data."""
    return Path(os.environ.get("MNIST_CACHE_DIR", "data")).resolve()


def downloads_allowed() -> bool:
    """MNIST_NO_DOWNLOAD=1 turns off fetching MNIST from torchvision's mirrors."""
    return os.environ.get("MNIST_NO_DOWNLOAD") != "1"


def runs_dir() -> str:
    """MNIST_RUNS_DIR: the run store's folder, else ./runs."""
    return os.environ.get("MNIST_RUNS_DIR") or "runs"


def teachers() -> str:
    """MNIST_TEACHERS: comma-separated login e-mails of the teachers (raw; access parses it)."""
    return os.environ.get("MNIST_TEACHERS", "")


# -- training processes ----------------------------------------------------------------------------


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def train_threads(workers: int) -> int:
    """MNIST_TRAIN_THREADS: torch threads per worker, else the machine's cores shared among the
    workers, at least one."""
    return env_whole("MNIST_TRAIN_THREADS", max(1, usable_cores() // max(workers, 1)), 1, 1024)


def train_nice() -> int:
    """MNIST_TRAIN_NICE: how much lower than the web server the workers run (0-19; default 0:
    service/workers.py's docstring says what was measured)."""
    return env_whole("MNIST_TRAIN_NICE", 0, 0, 19)


def ray_address() -> str | None:
    """MNIST_RAY_ADDRESS: `auto` (a cluster started on this machine), `host:port` or
    `ray://host:10001`; None when unset. Anything else is a SettingError naming it."""
    raw = os.environ.get("MNIST_RAY_ADDRESS", "").strip()
    if not raw:
        return None
    if raw != "auto" and not RAY_ADDRESS.fullmatch(raw):
        raise SettingError("MNIST_RAY_ADDRESS", f"must be auto, host:port or ray://host:port, got {raw!r}")
    return raw


def ray_threads() -> int:
    """MNIST_RAY_THREADS: torch threads per Ray actor."""
    return env_whole("MNIST_RAY_THREADS", 1, 1, 256)


def ray_workers(default: int) -> int:
    """MNIST_RAY_WORKERS: how many Ray actors train at once."""
    return env_whole("MNIST_RAY_WORKERS", default, 1, 1024)


# -- the speed wing --------------------------------------------------------------------------------


def fused_kernel_enabled() -> bool:
    """MNIST_FUSED_KERNEL=0 turns the compiled layers off (the same layers then run on torch)."""
    return os.environ.get("MNIST_FUSED_KERNEL", "1").strip() != "0"


def kernel_cache() -> Path:
    """MNIST_KERNEL_CACHE: where compiled kernels are kept, else the user's cache folder."""
    explicit = os.environ.get("MNIST_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnist-dashboard" / "kernels"


def check_settings() -> None:
    """Read every deployment setting once, so that a wrong value stops the server at once with
    a SettingError naming the variable, instead of silently meaning something else."""
    limits = Limits.from_env()
    train_threads(limits.max_concurrent)
    train_nice()
    ray_address()
    ray_threads()
    ray_workers(limits.max_concurrent)
