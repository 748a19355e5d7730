"""The direct fused updates (mnist_core/speed/fused_step.py) are `optimizer.step()`, bit for bit."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from mnist_core.engine.config import TrainConfig
from mnist_core.speed import seam as speed
from mnist_core.speed.seam import update_for
from mnist_core.speed.fused_step import FusedAdamStep, FusedSGDStep, RMSpropStep, applies, construct, direct_step_for
from mnist_core.engine.train import start_session, train_step, uses_optimizer_step
from tests.synthetic import synthetic_mnist


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))


def trained(model: nn.Module, optimizer: torch.optim.Optimizer, update: Callable[[], object],
            steps: int = 12, cycle_momentum: bool = True) -> list[torch.Tensor]:
    """Weights after `steps` updates made by `update`, a one-cycle schedule moving the lr (and
    Adam's first beta or SGD's momentum, unless `cycle_momentum` is False)."""
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=steps,
                                                   cycle_momentum=cycle_momentum)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 12, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        for p in model.parameters():
            p.grad = None
        nn.functional.cross_entropy(model(x), y).backward()
        update()
        schedule.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind, options, cycle_momentum", [
    (torch.optim.Adam, {}, True),
    (torch.optim.Adam, {"weight_decay": 1e-2, "amsgrad": True}, True),
    (torch.optim.AdamW, {"weight_decay": 0.05}, True),
    (torch.optim.Adam, {"maximize": True, "betas": (0.8, 0.99), "eps": 1e-6}, False),
    (torch.optim.SGD, {}, False),  # no momentum: no state at all
    (torch.optim.SGD, {}, True),  # one-cycle gives it momentum from the first step
    (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}, False),
    (torch.optim.SGD, {"momentum": 0.5, "dampening": 0.2, "maximize": True}, True),
    (torch.optim.RMSprop, {}, False),
    (torch.optim.RMSprop, {}, True),  # one-cycle gives it momentum from the first step
    (torch.optim.RMSprop, {"centered": True, "momentum": 0.5, "weight_decay": 1e-3}, False),
    (torch.optim.RMSprop, {"alpha": 0.9, "eps": 1e-6, "maximize": True, "foreach": True}, True),
])
def test_the_direct_call_updates_exactly_as_step_does(kind, options, cycle_momentum):
    plain, direct = net(), net()
    fused = {} if kind is torch.optim.RMSprop else {"fused": True}  # RMSprop has no fused kernel
    by_step = kind(plain.parameters(), lr=0.01, **fused, **options)
    by_call = kind(direct.parameters(), lr=0.01, **fused, **options)
    assert applies(by_call)
    expected = trained(plain, by_step, lambda: by_step.step(), cycle_momentum=cycle_momentum)
    got = trained(direct, by_call, update_for(by_call), cycle_momentum=cycle_momentum)
    assert update_for(by_call) != by_call.step  # the direct call, not step() under another name
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    state_a, state_b = by_step.state_dict(), by_call.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    assert state_a["state"].keys() == state_b["state"].keys()
    for key, value in state_a["state"].items():
        assert value.keys() == state_b["state"][key].keys()
        for name, tensor in value.items():  # created by the direct call's first update
            other = state_b["state"][key][name]
            assert (tensor.dtype, tensor.device, tensor.stride()) == (other.dtype, other.device, other.stride()), name
            assert torch.equal(tensor, other), name


def test_groups_with_their_own_lr_and_a_frozen_parameter_are_updated_as_step_does():
    plain, direct = net(), net()
    for model in (plain, direct):
        model[2].bias.requires_grad_(False)
    optimizers = [
        torch.optim.Adam([{"params": model[0].parameters(), "lr": 0.02},
                          {"params": [model[2].weight, model[2].bias]}], lr=0.005, fused=True)
        for model in (plain, direct)
    ]
    expected = trained(plain, optimizers[0], lambda: optimizers[0].step())
    got = trained(direct, optimizers[1], FusedAdamStep(optimizers[1]))
    assert all(torch.equal(e, g) for e, g in zip(expected, got))
    assert torch.equal(direct[2].bias, net()[2].bias)  # no gradient, never moved


def test_other_optimizers_keep_their_own_step():
    params = list(net().parameters())
    for optimizer in (torch.optim.Adam(params, lr=0.01), torch.optim.SGD(params, lr=0.1),
                      torch.optim.RMSprop(params, lr=0.01, differentiable=True),
                      torch.optim.Adam(params, lr=torch.tensor(0.01), fused=True),
                      torch.optim.SGD(params, lr=torch.tensor(0.1), fused=True),
                      torch.optim.RMSprop(params, lr=torch.tensor(0.01)), torch.optim.Adagrad(params)):
        assert not applies(optimizer) and direct_step_for(optimizer) is None and update_for(optimizer) == optimizer.step


def test_a_training_session_uses_the_direct_call_for_every_optimizer():
    data = synthetic_mnist()
    adam, sgd, rmsprop = (start_session(TrainConfig(model="mlp", optimizer=name, val_split=0.0), data)
                          for name in ("adam", "sgd", "rmsprop"))
    assert isinstance(adam.update, FusedAdamStep) and isinstance(sgd.update, FusedSGDStep)
    assert isinstance(rmsprop.update, RMSpropStep)
    for session in (adam, sgd, rmsprop):
        before = copy.deepcopy([p.detach() for p in session.params])
        xb, yb = session.splits.train_batch(torch.arange(32))
        for _ in range(2):  # the first step creates the state, the second uses it
            train_step(session, xb, yb)
        assert all(not torch.equal(a, b) for a, b in zip(before, session.params))


def test_construct_makes_the_optimizer_the_constructor_makes():
    for kind, options in ((torch.optim.Adam, {"lr": 0.01, "fused": True}), (torch.optim.AdamW, {"weight_decay": 0.1}),
                          (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})):
        built, usual = construct(kind, net().parameters(), **options), kind(net().parameters(), **options)
        assert type(built) is kind and built.param_groups[0].keys() == usual.param_groups[0].keys()
        assert all(built.param_groups[0][k] == usual.param_groups[0][k] for k in usual.param_groups[0] if k != "params")


def test_uses_optimizer_step_names_only_the_fused_kinds_off_cpu_and_cuda():
    assert not uses_optimizer_step(TrainConfig(optimizer="adam", device="cpu"))
    assert not uses_optimizer_step(TrainConfig(optimizer="adamw", device="cuda"))
    assert not uses_optimizer_step(TrainConfig(optimizer="sgd", device="cpu"))
    assert uses_optimizer_step(TrainConfig(optimizer="adam", device="mps"))
    assert uses_optimizer_step(TrainConfig(optimizer="sgd", device="mps"))
    assert not uses_optimizer_step(TrainConfig(model="linear", optimizer="rmsprop", device="mps"))
    assert not uses_optimizer_step(TrainConfig(model="linear", optimizer="scratch-sgd", device="cpu"))


def test_workers_and_runs_with_any_optimizer_never_import_dynamo_and_optimizer_step_does():
    """In a fresh process (torch._dynamo: 1.1-1.3 s and 156 MB at its import), with every warning
    an error: an LR scheduler warns when it steps before the optimizer has. A dashboard worker's
    warm-up runs first. There, `construct` also shows it leaves no cache of its own on torch's
    method (this test process has usually imported dynamo already, and then `construct` takes
    the usual path). Last, one `optimizer.step()` shows the check sees dynamo when it comes in.
    The machine's probe verdict for this torch is made first (here), as the first worker after an
    upgrade makes it: that one import of dynamo is the probe's, once per machine and torch."""
    assert all(speed.warm_up().values())  # every private path agrees with torch's public API here
    code = textwrap.dedent("""
        import sys, warnings
        import torch
        warnings.simplefilter("error")
        from mnist_core.engine.config import TrainConfig
        from mnist_core.engine.train import train
        from mnist_core.service.trainer import warm_up
        from tests.synthetic import synthetic_mnist
        warm_up()  # what every dashboard worker runs first: each model and optimizer once
        print("warm_up", "torch._dynamo" in sys.modules)
        data = synthetic_mnist()
        for optimizer in ("adam", "adamw", "sgd", "rmsprop", "scratch-sgd"):
            for schedule in ("onecycle", "step", "plateau", "none"):
                config = TrainConfig(model="mlp" if optimizer == "scratch-sgd" else "cnn-sprint",
                                     optimizer=optimizer, schedule=schedule, epochs=2, batch_size=64, device="cpu")
                assert train(config, data).status == "finished"
            print(optimizer, "torch._dynamo" in sys.modules)
        assert not hasattr(torch.optim.Optimizer.add_param_group.__wrapped__, "__dynamo_disable")
        weight = torch.nn.Parameter(torch.ones(3))
        weight.grad = torch.ones(3)
        torch.optim.RMSprop([weight]).step()
        print("step", "torch._dynamo" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["warm_up", "False", "adam", "False", "adamw", "False", "sgd", "False",
                                   "rmsprop", "False", "scratch-sgd", "False", "step", "True"]
