"""Adam's, AdamW's and SGD's fused updates, and RMSprop's, called directly instead of through
`optimizer.step()`.

`torch.optim.Adam.step()` with `fused=True` ends in one kernel over all weights, but reaches it
through Python that runs on every call: a grad-mode switch with two dynamo graph breaks, a
dynamo-disabled wrapper, the per-parameter state walk of `_init_group`, and grouping the tensors
by device and dtype. Profiled on a 2-core CPU (cnn-small, batch 64, AVX2 fp32), that wrapper
took about 0.25 ms of a ~6 ms step, more than the kernel itself. Fused SGD's wrapper is lighter,
0.04-0.07 ms of its 0.10-0.14 ms for cnn-small's weights, which is still a quarter of a `linear`
step (linear trains 1.26x faster without it).

`FusedAdamStep` calls the same two kernels (`_foreach_add_` on the step counts, then
`_fused_adam_` or `_fused_adamw_`) with the optimizer's own state and hyperparameters,
`FusedSGDStep` calls `_fused_sgd_` as `torch.optim.SGD` does, and `RMSpropStep` calls the
functional `torch.optim.rmsprop.rmsprop` that `RMSprop.step()` calls (RMSprop has no fused
kernel). So the update is bit for bit the one `optimizer.step()` makes, learning-rate schedules
(one-cycle's momentum too) still act on `param_groups`, and the optimizer's state dict is
unchanged. The first call creates the state as `optimizer.step()` would.

Neither these calls nor `construct` import `torch._dynamo`, which `optimizer.step()` and the
optimizer's constructor import at their first use (1.1-1.3 s and 156 MB on a 2-core CPU), only to
keep a `torch.compile` from tracing them. Nothing in this engine is compiled, so a run with any
of these optimizers starts without it (`train.uses_optimizer_step`).

Where a probe (probes.py) found a path differing from torch's own on this torch, the seam
(speed/__init__.py) does not use it.
"""

from __future__ import annotations

import torch

try:  # RMSprop.step()'s own update, public as torch.optim's functional API
    from torch.optim.rmsprop import rmsprop as functional_rmsprop
except ImportError:  # pragma: no cover  (a torch without it: RMSprop keeps optimizer.step())
    functional_rmsprop = None


def plain_groups(optimizer: torch.optim.Optimizer) -> bool:
    """Every group's learning rate a float and the group neither capturable nor differentiable,
    over real floating-point tensors of one device and dtype, with no gradient scaler attached."""
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return (
        bool(params) and len({(p.device, p.dtype) for p in params}) == 1
        and params[0].is_floating_point()
        and all(not group.get("capturable", False) and not group["differentiable"]
                and not isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)
    )


def applies(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a direct call covers `optimizer` (see `direct_step_for`)."""
    return direct_step_for(optimizer) is not None


def construct(kind: type[torch.optim.Optimizer], params, **options) -> torch.optim.Optimizer:
    """`kind(params, **options)` without importing torch._dynamo.

    `Optimizer.add_param_group` is wrapped by `torch._disable_dynamo`, which imports dynamo at
    its first call and caches the disabled method on the plain one as `__dynamo_disable`. Caching
    the plain method there for the construction makes the wrapper call it directly; the cache is
    removed afterwards, so torch is left as it was. Where torch's wrapper is not what this expects,
    or dynamo's is already cached, the optimizer is constructed as usual."""
    plain = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    if plain is None or getattr(plain, "__dynamo_disable", None) is not None:
        return kind(params, **options)
    setattr(plain, "__dynamo_disable", plain)
    try:
        return kind(params, **options)
    finally:
        if getattr(plain, "__dynamo_disable", None) is plain:
            delattr(plain, "__dynamo_disable")


def start_adam_state(state: dict, p: torch.Tensor, group: dict) -> dict:
    """A parameter's state before its first update, as fused Adam's `_init_group` makes it: the
    step count a float32 scalar on the parameter's device, the moments zeros in its layout."""
    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if group["amsgrad"]:
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def start_rmsprop_state(state: dict, p: torch.Tensor, group: dict) -> dict:
    """A parameter's state before its first update, as RMSprop's `_init_group` makes it (not
    capturable: the step count a CPU scalar of the default float type)."""
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    state["step"] = torch.zeros((), dtype=scalar)
    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if group["momentum"] > 0:
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if group["centered"]:
        state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


class DirectStep:
    """`optimizer.step()` minus its Python wrapper: `update` runs the kernel on each group's
    parameters that have a gradient."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    @torch.no_grad()
    def __call__(self) -> None:
        self.optimizer._opt_called = True  # what an LR scheduler's wrapper of `optimizer.step()` records
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self.update(group, params)

    def update(self, group: dict, params: list[torch.Tensor]) -> None:
        raise NotImplementedError


class FusedAdamStep(DirectStep):
    """A fused Adam's or AdamW's step (see `applies`)."""

    def update(self, group: dict, params: list[torch.Tensor]) -> None:
        state = self.optimizer.state
        states = [state[p] or start_adam_state(state[p], p, group) for p in params]
        steps = [s["step"] for s in states]
        beta1, beta2 = group["betas"]
        # AdamW is Adam with this key set in today's torch, a class of its own in older ones.
        decoupled = group.get("decoupled_weight_decay", isinstance(self.optimizer, torch.optim.AdamW))
        kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        torch._foreach_add_(steps, 1)
        kernel(
            params, [p.grad for p in params], [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [], steps,
            amsgrad=group["amsgrad"], lr=group["lr"], beta1=beta1, beta2=beta2,
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
            grad_scale=None, found_inf=None,
        )


class FusedSGDStep(DirectStep):
    """A fused SGD's step (see `applies`): what `torch.optim.SGD.step` and its `_fused_sgd` do
    for one device and dtype."""

    def update(self, group: dict, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params]
        buffers: list[torch.Tensor | None] = []
        first = False
        if group["momentum"] != 0:
            states = [self.optimizer.state[p] for p in params]
            buffers = [s.get("momentum_buffer") for s in states]
            first = all(buffer is None for buffer in buffers)
            if first:  # the kernel fills them with the gradients
                buffers = [torch.empty_like(g) for g in grads]
                for s, buffer in zip(states, buffers):
                    s["momentum_buffer"] = buffer
        torch._fused_sgd_(
            params, grads, buffers, weight_decay=group["weight_decay"], momentum=group["momentum"],
            lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
            maximize=group["maximize"], is_first_step=first, grad_scale=None, found_inf=None,
        )


class RMSpropStep(DirectStep):
    """An RMSprop's step (see `applies`): its `_init_group` and the functional `rmsprop` it calls."""

    def update(self, group: dict, params: list[torch.Tensor]) -> None:
        state = self.optimizer.state
        states = [state[p] or start_rmsprop_state(state[p], p, group) for p in params]
        functional_rmsprop(
            params, [p.grad for p in params], [s["square_avg"] for s in states],
            [s["grad_avg"] for s in states] if group["centered"] else [],
            [s["momentum_buffer"] for s in states] if group["momentum"] > 0 else [],
            [s["step"] for s in states], foreach=group["foreach"], maximize=group["maximize"],
            differentiable=False, capturable=False, has_complex=False, lr=group["lr"],
            alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
            momentum=group["momentum"], centered=group["centered"],
        )


def direct_step_for(optimizer: torch.optim.Optimizer | None) -> DirectStep | None:
    """The direct call for `optimizer` where one covers it: a fused Adam or AdamW, a fused SGD,
    or an RMSprop, each with plain groups (see `plain_groups`); None where `optimizer.step()`
    must run."""
    if isinstance(optimizer, torch.optim.RMSprop):
        step, available = RMSpropStep, functional_rmsprop is not None
    elif isinstance(optimizer, (torch.optim.Adam, torch.optim.SGD)):
        kernel = "_fused_adam_" if isinstance(optimizer, torch.optim.Adam) else "_fused_sgd_"
        step = FusedAdamStep if isinstance(optimizer, torch.optim.Adam) else FusedSGDStep
        available = hasattr(torch, kernel) and all(group["fused"] for group in optimizer.param_groups)
    else:
        return None
    return step(optimizer) if available and plain_groups(optimizer) else None


