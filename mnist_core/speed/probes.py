"""Each private-API path of the speed wing, checked against the public one before it is used.

The direct optimizer updates (fused_step) call torch's private fused kernels and replicate what
`optimizer.step()` does around them; `fused_step.construct` borrows torch's dynamo-disable cache.
A torch release may change any of that without notice. So before a process uses a path, one
tiny model is updated twice through the path and twice through `optimizer.step()` (or built
through `construct` and through the optimizer's own constructor), and the two must agree bit for
bit: weights, every state tensor, and no learning-rate scheduler warning. A path that differs or
raises steps aside with one log line, and training uses the public API instead.

`optimizer.step()` imports torch._dynamo at its first call (1.1-1.3 s, 156 MB), which the direct
updates exist to avoid, so a verdict is kept per machine, torch version and speed-wing source
(next to the compiled kernels, `settings.kernel_cache()`): only the first process after an
upgrade pays for the probe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from mnist_core import settings
from mnist_core.speed import fused_step

LOG = logging.getLogger(__name__)
SHAPES = ((4, 3), (3,))  # a weight and a bias: enough for every per-tensor code path
STEPS = 2  # the first update creates the state, the second uses it

# What each training optimizer is probed as: the options training uses (fused where it can be).
CASES: dict[str, tuple[type[torch.optim.Optimizer], dict]] = {
    "adam": (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-4, "fused": True}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 1e-2, "fused": True}),
    "sgd": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4, "fused": True}),
    "sgd-plain": (torch.optim.SGD, {"lr": 1e-1, "fused": True}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 1e-3, "weight_decay": 1e-4}),
}
PATHS = ("construct", *CASES)

_lock = threading.Lock()
_verdict: dict[str, bool] = {}


def case_for(optimizer: torch.optim.Optimizer) -> str | None:
    """Which probed case covers `optimizer`'s direct update (None: no direct update exists)."""
    if isinstance(optimizer, torch.optim.RMSprop):
        return "rmsprop"
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    if isinstance(optimizer, torch.optim.Adam):
        decoupled = any(group.get("decoupled_weight_decay", False) for group in optimizer.param_groups)
        return "adamw" if decoupled else "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd" if any(group["momentum"] for group in optimizer.param_groups) else "sgd-plain"
    return None


def tensors_equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and a.device == b.device and torch.equal(a, b)
    return a == b


def same_state(public: torch.optim.Optimizer, direct: torch.optim.Optimizer,
               public_params: list[torch.Tensor], direct_params: list[torch.Tensor]) -> bool:
    for p, q in zip(public_params, direct_params):
        ours, theirs = direct.state.get(q, {}), public.state.get(p, {})
        if set(ours) != set(theirs) or not all(tensors_equal(ours[k], theirs[k]) for k in theirs):
            return False
    return all(tensors_equal(p.detach(), q.detach()) for p, q in zip(public_params, direct_params))


def probe_update(name: str) -> bool:
    """Two updates through the direct call against two through `optimizer.step()`, with the
    same gradients: True when weights and state agree bit for bit and a learning-rate scheduler
    sees the direct update as a step (it warns otherwise)."""
    kind, options = CASES[name]
    generator = torch.Generator().manual_seed(0)
    public_params = [torch.randn(shape, generator=generator).requires_grad_() for shape in SHAPES]
    direct_params = [p.detach().clone().requires_grad_() for p in public_params]
    public = kind(public_params, **options)
    direct = kind(direct_params, **options)
    step = fused_step.direct_step_for(direct)
    if step is None:
        return False
    scheduler = torch.optim.lr_scheduler.StepLR(direct, step_size=1, gamma=0.5)
    public_scheduler = torch.optim.lr_scheduler.StepLR(public, step_size=1, gamma=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(STEPS):
            grads = [torch.randn(shape, generator=generator) for shape in SHAPES]
            for p, q, g in zip(public_params, direct_params, grads):
                p.grad, q.grad = g.clone(), g.clone()
            public.step()
            step()
            public_scheduler.step()
            scheduler.step()
    if any("optimizer.step()" in str(w.message) for w in caught):
        return False
    return same_state(public, direct, public_params, direct_params)


def probe_construct() -> bool:
    """Every probed optimizer built through `construct` equals one built by its constructor."""
    for kind, options in CASES.values():
        params = [torch.zeros(shape, requires_grad=True) for shape in SHAPES]
        ours, theirs = fused_step.construct(kind, params, **options), kind(params, **options)
        if type(ours) is not type(theirs) or ours.state_dict() != theirs.state_dict():
            return False
    plain = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    return plain is None or getattr(plain, "__dynamo_disable", None) is not plain  # torch left as it was


def run_probes() -> dict[str, bool]:
    """Probe every path now; a path that differs or raises is False, with one log line."""
    checks: dict[str, Callable[[], bool]] = {"construct": probe_construct}
    checks.update({name: (lambda name=name: probe_update(name)) for name in CASES})
    verdict = {}
    for name, check in checks.items():
        try:
            verdict[name] = bool(check())
            reason = "differs from the public API"
        except Exception as err:  # any failure of a private path means: do not use it
            verdict[name] = False
            reason = f"raised {type(err).__name__}: {err}"
        if not verdict[name]:
            LOG.warning("speed: the direct %s path %s; using torch's public API instead", name, reason)
    return verdict


def verdict_file() -> Path:
    """Where this machine keeps the verdict for this torch and this speed wing's source."""
    digest = hashlib.sha256()
    for module in (fused_step.__file__, __file__):
        digest.update(Path(module).read_bytes())
    digest.update(f"{torch.__version__} {platform.machine()} {platform.python_version()}".encode())
    return settings.kernel_cache() / f"probes-{digest.hexdigest()[:16]}.json"


def load(path: Path) -> dict[str, bool] | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or set(stored) != set(PATHS) or not all(isinstance(v, bool) for v in stored.values()):
        return None
    for name, ok in stored.items():
        if not ok:
            LOG.warning("speed: the direct %s path failed its probe on this torch; using torch's public API", name)
    return stored


def save(path: Path, verdict: dict[str, bool]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".probes-", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(verdict, handle)
        os.replace(temp, path)
    except OSError as err:  # a read-only cache: probe again next time
        LOG.info("speed: cannot keep the probe verdict in %s (%s)", path.parent, err)


def verdict() -> dict[str, bool]:
    """Which private paths this process may use: probed once per machine and torch version."""
    with _lock:
        if not _verdict:
            path = verdict_file()
            found = load(path)
            if found is None:
                found = run_probes()
                save(path, found)
            _verdict.update(found)
        return dict(_verdict)


def allowed(path: str) -> bool:
    return verdict().get(path, False)


def forget() -> None:
    """Drop this process's verdict (tests, or after changing the cache folder)."""
    with _lock:
        _verdict.clear()
