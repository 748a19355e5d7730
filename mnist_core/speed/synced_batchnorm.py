"""Batch norm over a whole batch whose slices train on different threads (cpu_speed.BatchParts).

Batch norm normalises with the statistics of the whole batch, so a slice cannot compute its
part alone. Here the slices meet once per layer going forward (to combine their per-channel
counts, means and variances) and once going back (to add up two per-channel sums of the
gradient): the normalisation, the running statistics and the gradients are the whole batch's,
up to the order of float additions. Measured (2 cores, AVX2 fp32, OpenMP threads sleeping while
they wait, one process, whole and sliced alternating, median of 6): the cnn-sprint recipe
12,650 -> 15,528 images/s; cnn-fast, whose batch norm runs on 16 channels at full resolution,
6,275 -> 6,129. Slices each normalised with their own statistics were faster still but compute
something else.

A batch-norm module of the training copy of a model becomes a `Synced...` subclass (its
parameters, buffers and state-dict names unchanged). Outside a slice (evaluation, a run on one
thread) it is the plain module.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MEET_TIMEOUT_S = 120.0  # a slice that never arrives is a bug: fail instead of hanging the worker


class SliceMeeting:
    """Where the slices of one batch exchange per-channel statistics, each slice getting every
    slice's values in slice order (so every slice computes the same bits from them).

    Two sets of slots alternate, so one barrier per exchange suffices: a slice can write the
    next exchange only after every slice has arrived there, that is after every slice has read
    this one.
    """

    def __init__(self, count: int, total: int):
        self.total = total  # images in the whole batch (count is the number of slices)
        self.barrier = threading.Barrier(count, timeout=MEET_TIMEOUT_S)
        self.slots: list[list[torch.Tensor | None]] = [[None] * count, [None] * count]
        self.done = [0] * count

    def gather(self, index: int, value: torch.Tensor) -> list[torch.Tensor]:
        """Every slice's `value`, in slice order, once every slice has given its own."""
        slots = self.slots[self.done[index] % 2]
        self.done[index] += 1
        slots[index] = value
        self.barrier.wait()
        return list(slots)  # type: ignore[arg-type]

    def sum(self, index: int, value: torch.Tensor) -> torch.Tensor:
        """The sum of every slice's `value`, added in slice order."""
        values = self.gather(index, value)
        total = values[0]
        for other in values[1:]:
            total = total + other
        return total

    def abandon(self) -> None:
        """Release the other slices (they raise BrokenBarrierError) when one slice fails."""
        self.barrier.abort()


class SyncedNorm(torch.autograd.Function):
    """Batch norm of one slice with the whole batch's mean and variance; one exchange going
    forward (each slice's count, mean and variance, combined as in Chan et al.'s parallel
    variance) and one going back (each slice's sums of the gradient and of gradient x
    normalised input). The normalisation itself is torch's fused kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                meeting: SliceMeeting, index: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x.float(), dims, correction=0)  # fp32 statistics under bf16 autocast too
        count = torch.full_like(mean, x.numel() // x.shape[1])
        slices = meeting.gather(index, torch.stack([count, mean, var]))
        total = sum(s[0] for s in slices)
        mean = sum(s[0] * s[1] for s in slices) / total
        var = sum(s[0] * (s[2] + (s[1] - mean) ** 2) for s in slices) / total
        out = F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps))
        ctx.meeting, ctx.index, ctx.total = meeting, index, total
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        shape = [1, -1] + [1] * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        dtype, grad = grad.dtype, grad.float()
        normalised = (x.float() - mean.view(shape)) * invstd.view(shape)
        grad_bias, grad_weight = grad.sum(dims), (grad * normalised).sum(dims)  # this slice's share
        sums = ctx.meeting.sum(ctx.index, torch.stack([grad_bias, grad_weight])) / ctx.total
        scale = invstd if weight is None else invstd * weight
        grad_x = (grad - sums[0].view(shape) - normalised * sums[1].view(shape)) * scale.view(shape)
        return (grad_x.to(dtype), grad_weight if weight is not None else None, grad_bias if weight is not None else None,
                None, None, None)


_current = threading.local()


@contextmanager
def in_slice(meeting: SliceMeeting, index: int) -> Iterator[None]:
    """Mark this thread's forward passes as slice `index` of `meeting`'s batch."""
    _current.slice = (meeting, index)
    try:
        yield
    except BaseException:
        meeting.abandon()
        raise
    finally:
        _current.slice = None


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with the whole batch's statistics when called inside a slice (see `in_slice`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        where = getattr(_current, "slice", None)
        if where is None or not self.training:
            return super().forward(x)
        meeting, index = where
        count = meeting.total * x[0, 0].numel()  # values per channel in the whole batch
        if count == 1:  # one image in one slice: torch's own module refuses it, with its message
            return super().forward(x)
        out, mean, var = SyncedNorm.apply(x, self.weight, self.bias, meeting, index, self.eps)
        if self.track_running_stats and index == 0:  # one slice updates the buffers, once
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
                self.running_var.mul_(1 - factor).add_(var * (count / (count - 1)), alpha=factor)
        return out


class SyncedBatchNorm1d(SyncedBatchNorm, nn.BatchNorm1d):
    pass


class SyncedBatchNorm2d(SyncedBatchNorm, nn.BatchNorm2d):
    pass


SYNCED = {nn.BatchNorm1d: SyncedBatchNorm1d, nn.BatchNorm2d: SyncedBatchNorm2d}


def can_sync(module: nn.Module) -> bool:
    """Whether `module` is no batch norm, or one `sync_batch_norms` handles (exactly
    BatchNorm1d/2d, not a subclass of theirs with its own forward)."""
    return (not isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module) in SYNCED
            or isinstance(module, SyncedBatchNorm))


def sync_batch_norms(model: nn.Module) -> bool:
    """Make every BatchNorm1d/2d of `model` (a training copy) synced, in place; False (nothing
    changed) if it has another kind of batch norm, which slices cannot train."""
    if not all(can_sync(m) for m in model.modules()):
        return False
    for module in model.modules():
        if type(module) in SYNCED:
            module.__class__ = SYNCED[type(module)]
    return True
