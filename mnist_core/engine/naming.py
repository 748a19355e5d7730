"""Readable run names and one colour per run, used in every legend, table and picker.

An id like `linear-a6100caca00a` identifies a run but says nothing; the name says what sets it
apart from the defaults (`cnn-fast · lr 0.003 · batch 128 · seed 1`). Every setting that differs
from TrainConfig's defaults is named, so two different runs never share a name. The colour comes
from the id, so a run keeps it on every page and in every chart.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from mnist_core.engine.config import TrainConfig

DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name != "extra"}
# Order and short words in names; momentum only where the optimizer uses it.
SHORT = {
    "lr": "lr", "batch_size": "batch", "epochs": "epochs", "optimizer": "", "schedule": "schedule",
    "dropout": "dropout", "weight_decay": "wd", "momentum": "momentum", "augment": "augment",
    "val_split": "val", "seed": "seed", "device": "on", "precision": "", "time_budget_s": "budget", "dataset": "",
}
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")
# 20 distinguishable colours (Plotly's D3 and G10 palettes, deduplicated).
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6",
    "#dd4477", "#66aa00", "#b82e2e", "#316395",
)


def format_value(key: str, value: Any) -> str:
    if key == "augment":
        return "augmented" if value == "affine" else "no augmentation"
    if key == "schedule" and value == "none":
        return "constant lr"
    if key == "time_budget_s":
        return f"{value:g} s"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_text(key: str, value: Any) -> str:
    """One setting as it reads in a name: `lr 0.003`, `batch 128`, `adamw`, `augmented`."""
    word = SHORT.get(key, key)
    text = format_value(key, value)
    if key in ("augment",) or (key == "schedule" and value == "none") or not word:
        return text
    return f"{word} {text}"


def run_name(config: dict, always: tuple[str, ...] = ()) -> str:
    """The model, then every setting that differs from the defaults (and those in `always`)."""
    parts = [str(config.get("model", "?"))]
    for key in SHORT:
        value = config.get(key, DEFAULTS.get(key))
        if key == "momentum" and config.get("optimizer") not in MOMENTUM_OPTIMIZERS and key not in always:
            continue
        if key in always or value != DEFAULTS.get(key):
            if value is None:
                continue
            parts.append(setting_text(key, value))
    return " · ".join(parts)


def run_colour(run_id: str) -> str:
    """The run's colour, the same wherever it is drawn."""
    return PALETTE[int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) % len(PALETTE)]
