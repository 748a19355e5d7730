"""Configuration validation, hashing and deployment limits (mnist_core/engine/config.py, mnist_core/settings.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnist_core.settings import ConfigError, Limits
from mnist_core.engine.config import TrainConfig
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("epochs", 1000), ("batch_size", 0), ("lr", 0.0), ("lr", 11.0), ("lr", float("nan")),
     ("dropout", 0.95), ("val_split", 0.6), ("seed", -1), ("epochs", 1.5), ("momentum", True),
     ("optimizer", "lbfgs"), ("schedule", "cosine"), ("device", "tpu"), ("model", "resnet"),
     ("time_budget_s", 0.1), ("batch_size", "64")],
)
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    assert info.value.field == field and field in str(info.value)


def test_scratch_sgd_is_only_for_linear_and_mlp():
    TrainConfig(model="linear", optimizer="scratch-sgd")
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(model="cnn-small", optimizer="scratch-sgd")


def test_hash_is_stable_and_sensitive():
    a, b = TrainConfig(), TrainConfig.from_dict(TrainConfig().to_dict())
    assert a.config_hash() == b.config_hash() and len(a.config_hash()) == 12
    assert a.config_hash() != a.replace(seed=1).config_hash()
    # Stable across processes (no reliance on Python's randomised hash()).
    other = subprocess.run(
        [sys.executable, "-c", "from mnist_core.engine.config import TrainConfig; print(TrainConfig().config_hash())"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout.strip()
    assert other == a.config_hash()


def test_unknown_key_in_dict_is_rejected():
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_limits_from_environment(monkeypatch):
    monkeypatch.setenv("MNIST_MAX_EPOCHS", "2")
    monkeypatch.setenv("MNIST_MAX_BATCH_SIZE", "128")
    monkeypatch.setenv("MNIST_READ_ONLY", "")
    limits = Limits.from_env()
    limits.check(TrainConfig(epochs=2, batch_size=128))
    with pytest.raises(ConfigError, match="epochs.*limit of 2"):
        limits.check(TrainConfig(epochs=3))
    with pytest.raises(ConfigError, match="batch_size"):
        limits.check(TrainConfig(batch_size=256))
    monkeypatch.setenv("MNIST_READ_ONLY", "1")
    with pytest.raises(ConfigError, match="read-only"):
        Limits.from_env().check(TrainConfig())


def test_cli_rejects_bad_hyperparameters_with_the_field_name():
    result = subprocess.run(
        [sys.executable, "-m", "mnist_core", "train", "--model", "linear", "--lr", "50"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 2
    assert "lr" in result.stderr and "allowed range" in result.stderr and "Traceback" not in result.stderr


def test_a_negative_zero_is_the_same_setting_and_the_same_run():
    """-0.0 for dropout, weight decay, validation split or momentum was a different run id for
    the same settings (JSON writes -0.0)."""
    zeros = {"dropout": 0.0, "weight_decay": 0.0, "val_split": 0.0, "momentum": 0.0}
    negative = TrainConfig(**{name: -0.0 for name in zeros})
    assert negative.config_hash() == TrainConfig(**zeros).config_hash()
    assert all(str(getattr(negative, name)) == "0.0" for name in zeros)


@pytest.mark.parametrize("field", ["model", "optimizer", "schedule", "augment", "device", "precision", "dataset"])
def test_a_list_where_a_name_belongs_is_a_settings_error(field):
    """`model=["linear"]` (a repeated URL value, a JSON list) raised a TypeError."""
    with pytest.raises(ConfigError, match=f"{field}: must be a name"):
        TrainConfig(**{field: ["linear"]})
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict({field: {"a": 1}})
