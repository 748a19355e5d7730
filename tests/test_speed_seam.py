"""The speed wing's seam: each private-API path is probed against torch's public API, steps
aside with one log line when it differs or raises, and training goes on through the public
path. Every fallback is forced here and trained through."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from mnist_core.speed import seam as speed
from mnist_core.engine.config import TrainConfig
from mnist_core.engine.train import start_session, train
from mnist_core.speed import fused_step, probes
from tests.synthetic import synthetic_mnist

OPTIMIZER_OF = {"adam": "adam", "adamw": "adamw", "sgd": "sgd", "sgd-plain": "sgd", "rmsprop": "rmsprop"}


@pytest.fixture()
def fresh_probe(tmp_path, monkeypatch):
    """A process with no verdict yet and its own verdict folder."""
    monkeypatch.setenv("MNIST_KERNEL_CACHE", str(tmp_path / "cache"))
    probes.forget()
    yield tmp_path / "cache"
    probes.forget()


def broken(*args, **kwargs):
    raise RuntimeError("this torch changed the private kernel")


def changed(step_class, when, how):
    """`step_class.update` made to fail (`how`: "raise", or "differ" by a little) for the
    optimizers `when` picks, as a torch upgrade could make our call of its private kernel fail
    while its own `optimizer.step()` still works."""
    plain = step_class.update

    def update(self, group, params):
        if not when(self.optimizer, group):
            return plain(self, group, params)
        if how == "raise":
            raise RuntimeError("this torch changed the private kernel")
        plain(self, group, params)
        with torch.no_grad():
            for p in params:
                p.add_(1e-3)

    return update


def test_on_this_torch_every_private_path_agrees_with_the_public_api(fresh_probe):
    verdict = speed.warm_up()
    assert set(verdict) == set(probes.PATHS) and all(verdict.values()), verdict
    assert probes.verdict_file().is_file()  # kept for the next process on this machine


def test_a_kept_verdict_is_used_without_probing_again(fresh_probe, monkeypatch):
    speed.warm_up()
    probes.forget()
    monkeypatch.setattr(probes, "run_probes", broken)  # a second probe would raise
    assert all(speed.warm_up().values())


def test_a_damaged_verdict_file_is_probed_again(fresh_probe):
    fresh_probe.mkdir(parents=True)
    probes.verdict_file().write_text('{"adam": "yes"}')
    assert all(speed.warm_up().values())


# Each private path, made to fail in the way a torch upgrade could: (path, what to patch, how).
FAILURES = [
    ("adam", lambda m: m.setattr(fused_step.FusedAdamStep, "update", changed(
        fused_step.FusedAdamStep, lambda o, g: not isinstance(o, torch.optim.AdamW), "differ"))),
    ("adamw", lambda m: m.setattr(fused_step.FusedAdamStep, "update", changed(
        fused_step.FusedAdamStep, lambda o, g: isinstance(o, torch.optim.AdamW), "raise"))),
    ("sgd", lambda m: m.setattr(fused_step.FusedSGDStep, "update", changed(
        fused_step.FusedSGDStep, lambda o, g: g["momentum"] != 0, "differ"))),
    ("sgd-plain", lambda m: m.setattr(fused_step.FusedSGDStep, "update", changed(
        fused_step.FusedSGDStep, lambda o, g: g["momentum"] == 0, "raise"))),
    ("rmsprop", lambda m: m.setattr(fused_step, "functional_rmsprop", broken)),
]


@pytest.mark.parametrize(("path", "patch"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failing_update_path_steps_aside_and_training_goes_on_with_step(fresh_probe, monkeypatch, caplog,
                                                                         path, patch):
    patch(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="mnist_core.speed.probes"):
        verdict = speed.warm_up()
    assert verdict[path] is False and verdict["construct"] is True
    lines = [r.getMessage() for r in caplog.records if f"direct {path} path" in r.getMessage()]
    assert len(lines) == 1 and "public API" in lines[0]
    config = TrainConfig(model="mlp", optimizer=OPTIMIZER_OF[path], momentum=0.9 if path == "sgd" else 0.0,
                         epochs=1, batch_size=64, lr=1e-2 if "sgd" in path else 1e-3, device="cpu")
    session = start_session(config, synthetic_mnist())
    assert session.update == session.optimizer.step  # the public path, not the patched kernel's call
    result = train(config, synthetic_mnist())
    assert result.status == "finished" and math.isfinite(result.history[-1].train_loss)


def test_a_failing_constructor_path_steps_aside_and_training_goes_on(fresh_probe, monkeypatch, caplog):
    def construct_differently(kind, params, **options):
        return kind(params, **{**options, "lr": options.get("lr", 1e-3) * 2})

    monkeypatch.setattr(fused_step, "construct", construct_differently)
    with caplog.at_level(logging.WARNING, logger="mnist_core.speed.probes"):
        assert speed.warm_up()["construct"] is False
    assert any("direct construct path" in r.getMessage() for r in caplog.records)
    config = TrainConfig(model="linear", optimizer="adam", lr=1e-3, epochs=1, device="cpu")
    session = start_session(config, synthetic_mnist())
    assert session.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # built by Adam itself
    assert train(config, synthetic_mnist()).status == "finished"


def test_the_probe_sees_an_update_that_a_scheduler_would_not_count(fresh_probe, monkeypatch):
    """A direct update that stops telling LR schedulers it stepped makes them warn: it fails."""
    plain_call = fused_step.DirectStep.__call__

    def without_the_mark(self):
        plain_call(self)
        self.optimizer.__dict__.pop("_opt_called", None)

    monkeypatch.setattr(fused_step.DirectStep, "__call__", without_the_mark)
    assert probes.probe_update("adam") is False


def test_without_torch_s_private_bf16_query_the_cpu_flags_answer(monkeypatch):
    """torch has no public bf16 query; where its private op is gone, the CPU's flags decide."""
    from mnist_core.speed import kernel_build

    def gone():
        raise AttributeError("_is_mkldnn_bf16_supported")

    monkeypatch.setattr(speed, "mkldnn_says_bf16", gone)
    monkeypatch.setattr(kernel_build, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert speed.cpu_bf16() is True
    monkeypatch.setattr(kernel_build, "cpu_flags", lambda: {"avx2", "fma"})
    assert speed.cpu_bf16() is False


def test_a_torch_without_a_fused_kernel_for_the_device_trains_unfused(monkeypatch, caplog):
    """Older torch releases refuse `fused=True` on a CPU: the optimizer is then built unfused."""
    plain_init = torch.optim.SGD.__init__

    def no_fused_here(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        plain_init(self, params, *args, fused=fused, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "__init__", no_fused_here)
    config = TrainConfig(model="mlp", optimizer="sgd", momentum=0.9, lr=1e-2, epochs=1, device="cpu")
    with caplog.at_level(logging.WARNING, logger="mnist_core.speed.seam"):
        session = start_session(config, synthetic_mnist())
    assert not session.optimizer.param_groups[0]["fused"]
    assert session.update == session.optimizer.step  # no direct call for an unfused optimizer
    assert any("no fused SGD" in r.getMessage() for r in caplog.records)
    assert train(config, synthetic_mnist()).status == "finished"
