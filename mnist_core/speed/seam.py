"""The speed wing's one seam (mnist_core.speed.seam): what training and scoring ask for.

Training asks once (`for_training`) for its accelerated parts: the model laid out for the device
(compiled layers and channels-last on a CPU), the optimizer, its update (a direct fused call
where one applies) and the batch's slices (one per core). Scoring asks `for_inference`. The
modules below (cpu_speed, fused_layers, fused_step, synced_batchnorm, kernel_build) are this
wing's own; the engine imports only this module.

This is the only wing that touches private torch API, and each such path has a public
fallback: the compiled layers give way to torch's ops when no compiler or kernel is there, and
the direct optimizer paths are probed against the public API at warm-up (probes.py) and step
aside when they differ or raise.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mnist_core.speed import fused_step, kernel_build, probes
from mnist_core.speed.cpu_speed import (
    BatchParts,
    batch_parts_for,
    for_cpu_inference,
    for_cpu_training,
    inference_batch,
    keep_freed_memory,
    torch_threads,
)

LOG = logging.getLogger(__name__)

__all__ = [
    "Accelerated", "BatchParts", "cpu_bf16", "for_inference", "for_training", "inference_batch", "new_optimizer",
    "start_optimizer_import", "torch_threads", "update_for", "warm_up",
]


@dataclass
class Accelerated:
    """What a training run uses: the model on its device, its trainable parameters, the
    optimizer (None for a hand-written update), how to apply an update, and the batch's slices."""

    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer | None
    update: Callable[[], object] | None
    parts: BatchParts | None
    channels_last: bool


def new_optimizer(kind: type[torch.optim.Optimizer], params: list, **options) -> torch.optim.Optimizer:
    """`kind(params, **options)`, built without importing torch._dynamo where the probe allows.
    A torch whose `kind` has no fused kernel for these parameters' device refuses `fused=True`:
    then the same optimizer is built unfused (the same update, a kernel per tensor)."""
    build = fused_step.construct if probes.allowed("construct") else (lambda k, p, **o: k(p, **o))
    params = list(params)
    try:
        return build(kind, params, **options)
    except (RuntimeError, ValueError):
        if not options.get("fused"):
            raise
        LOG.warning("speed: this torch has no fused %s for %s; using the unfused one", kind.__name__,
                    params[0].device.type if params else "these parameters")
        return build(kind, params, **{k: v for k, v in options.items() if k != "fused"})


def update_for(optimizer: torch.optim.Optimizer) -> Callable[[], object]:
    """How `optimizer`'s update is applied: the direct call where one covers it and its probe
    passed, else `optimizer.step`."""
    case = probes.case_for(optimizer)
    direct = fused_step.direct_step_for(optimizer) if case and probes.allowed(case) else None
    return direct or optimizer.step


def for_training(model: nn.Module, device: torch.device, convolutional: bool,
                 make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer | None]) -> Accelerated:
    """Lay `model` out for training on `device` and make its optimizer there (`make_optimizer`
    gets the trainable parameters, after the layers are rewritten)."""
    channels_last = device.type == "cpu" and convolutional
    if device.type == "cpu":
        for_cpu_training(model)
        keep_freed_memory()
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params)
    update = update_for(optimizer) if optimizer is not None else None
    return Accelerated(model, params, optimizer, update, batch_parts_for(model, device), channels_last)


def for_inference(model: nn.Module, device: torch.device, most: int) -> tuple[nn.Module, int]:
    """The model to score many images with (channels-last copy of a CNN on a CPU) and the
    batch size that keeps its largest activation cache-sized."""
    model = for_cpu_inference(model)
    return model, inference_batch(model, device, most)


def mkldnn_says_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_bf16() -> bool:
    """Whether this CPU's oneDNN has bf16 kernels (then convolutions train about 1.5x faster in
    bf16). torch has no public way to ask: its private op answers where it exists, else the CPU's
    own flags (avx512_bf16 or amx_bf16) do."""
    try:
        return mkldnn_says_bf16()
    except (AttributeError, RuntimeError):
        return bool(kernel_build.cpu_flags() & {"avx512_bf16", "amx_bf16"})


def warm_up() -> dict[str, bool]:
    """Probe the private paths now (once per machine and torch version), so no visitor's run
    waits for it; returns which paths are used."""
    return probes.verdict()


def start_optimizer_import() -> threading.Thread:
    """Start importing what `optimizer.step()` imports at its first call (torch._dynamo: 1-2 s),
    in a background thread, so a process about to train with it pays while it loads data."""
    thread = threading.Thread(target=importlib.import_module, args=("torch._dynamo",),
                              name="import-torch._dynamo", daemon=True)
    thread.start()
    return thread
