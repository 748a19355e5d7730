"""CPU training made faster without changing the model or its maths: layer rewrites (and
compiled layers, fused_layers, which differ only in the order of float additions), an
allocator that keeps the memory a training step frees, a batch cut into one slice per core
(whose gradients sum to the batch's, up to the order of float additions), and inference batch
sizes.

ReLU followed by 2x2 max-pooling gives exactly the same values and gradients as pooling first
and ReLU after (both are monotone), and the latter does the ReLU and its backward on a quarter
of the pixels. Profiled on a 2-core fp32-only CPU (cnn-small, batch 64, channels-last), the
first pair went from ~5 ms to ~2 ms a step.

Tried and dropped: computing the one-channel first convolution as an im2col matrix product.
Alone it looked 3x faster than oneDNN; inside a real training step it was 0-15% slower (the
compiled kernel in fused_layers is what paid).
The rewritten model keeps every parameter under the same name, so its state dict is the
registered model's, and `train` hands back the registered structure.
"""

from __future__ import annotations

import copy
import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import nn

from mnist_core.speed.fused_layers import child_names, fuse_layers
from mnist_core.speed.synced_batchnorm import SliceMeeting, can_sync, in_slice, sync_batch_norms

# glibc mallopt() parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_AT_TOP = 64 << 20  # free memory at the heap's top kept for the next step, not given back
FROM_HEAP_BELOW = 32 << 20  # blocks under this come from the heap, not from their own mmap
MIN_PART = 16  # images: below this a slice's ops are too small to be worth a core of their own
# Scoring many images on a CPU: a forward pass's largest activation kept to about this size.
# Larger batches page-faulted: in batches of 2,000, scoring the 10,000 test images faulted in
# 3.1 million pages for cnn-best (11.2-11.7 s) and 0.67 million for cnn-small (1.8-2.0 s).
INFERENCE_ACTIVATION_BYTES = 8 << 20


def pool_before_relu(layers: nn.Sequential) -> nn.Sequential:
    """The same layers with every ReLU -> MaxPool2d pair swapped (identical values and gradients)."""
    modules = list(layers)
    i = 0
    while i < len(modules) - 1:
        if isinstance(modules[i], nn.ReLU) and isinstance(modules[i + 1], nn.MaxPool2d):
            modules[i], modules[i + 1] = modules[i + 1], modules[i]
            i += 2
        else:
            i += 1
    swapped = nn.Sequential()
    for name, module in zip(child_names(layers), modules):  # same names, so parameters keep theirs
        swapped.add_module(name, module)
    return swapped


def for_cpu_training(model: nn.Module) -> nn.Module:
    """Apply the rewrites to every Sequential child of `model`, in place: pooling before ReLU,
    then compiled kernels where they apply (fused_layers.fuse_layers: the same parameters under
    the same names)."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Sequential):
            setattr(model, name, fuse_layers(pool_before_relu(child)))
    return model


@torch.inference_mode()
def largest_activation(model: nn.Module) -> int:
    """The most numbers per image any layer outputs, measured on one blank image (a few ms at
    most): what sizes an inference batch."""
    sizes = [28 * 28]

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() > 0:
            sizes.append(output[0].numel())

    parameter = next(model.parameters())
    handles = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, 1, 28, 28, device=parameter.device, dtype=parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return max(sizes)


def inference_batch(model: nn.Module, device: torch.device, most: int) -> int:
    """Images per forward pass when scoring many: on a CPU, few enough that the largest
    activation stays near INFERENCE_ACTIVATION_BYTES, which a core's caches reach and the
    allocator serves from freed memory instead of fresh pages; at most `most`, and `most`
    on a GPU, whose memory does not fault."""
    if device.type != "cpu":
        return most
    itemsize = next(model.parameters()).element_size()
    return max(16, min(most, INFERENCE_ACTIVATION_BYTES // (itemsize * largest_activation(model))))


def for_cpu_inference(model: nn.Module) -> nn.Module:
    """The model to score many images with: on the CPU, a convolutional model's channels-last
    copy (oneDNN's fast layout; the caller's weights keep theirs, which a safetensors save needs
    contiguous) with the training rewrites (the compiled layers: the 10,000 test images
    through cnn-small in 0.40 s against 0.58, cnn-sprint 0.22 against 0.30); otherwise `model`
    itself, as when it is already a channels-last training model."""
    kernels = [p for p in model.parameters() if p.dim() == 4]
    if not kernels or kernels[0].device.type != "cpu":
        return model
    if all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels):
        return model
    return for_cpu_training(copy.deepcopy(model).to(memory_format=torch.channels_last))


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees, for the next step to reuse.

    By default glibc gives a freed block back to the kernel once the free space at the heap's
    top passes a few MB, so every step maps its activations afresh and the kernel zero-fills
    each page on first touch. Measured (AVX2 fp32, 2 threads, per step): cnn-small at batch 64,
    2,100-2,400 page faults and 5,500-5,800 images/s; kept, none and 8,400-10,200 (+50-75%);
    cnn-sprint +26%, cnn-best 27,000-32,000 faults a step and +29-33%. The cost is memory kept
    between steps: at most KEEP_AT_TOP of free heap (cnn-best's peak grew 14-82 MB). Applies to
    the whole process; a no-op returning False where the C library is not glibc.

    `mallopt` is looked up among the symbols the process has already loaded (`CDLL(None)`).
    `ctypes.util.find_library("c")` would run `/sbin/ldconfig -p` in a forked child at every
    run's start: a copy of a 850 MB worker for a moment, which the classroom load test's memory
    sampler once counted twice (2,252-2,310 MiB against 1,412-1,463 without it).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_TRIM_THRESHOLD, KEEP_AT_TOP) == 1 and mallopt(M_MMAP_THRESHOLD, FROM_HEAP_BELOW) == 1


def splits_exactly(model: nn.Module) -> bool:
    """Whether a batch's gradient is the weighted sum of its parts' gradients: true unless the
    model has active dropout (the parts would draw from the one shared random stream, in an
    order the scheduler picks) or a batch norm that cannot be synced across the parts
    (synced_batchnorm.can_sync: BatchNorm1d/2d can, and are then normalised with the whole
    batch's statistics)."""
    return all(
        can_sync(m) and not (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) for m in model.modules()
    )


class BatchParts:
    """Forward and backward of one batch as `parts` slices, one per core, each slice on one
    thread, instead of the whole batch with every op spread over all cores.

    Every op spread over the cores ends with the cores waiting for each other, dozens of times a
    step. When OpenMP's waiting threads sleep (OMP_WAIT_POLICY=PASSIVE, as the dashboard's
    workers run: see service/workers.py) each of those waits is a wake-up, and slices that never wait
    inside a step are much faster. Measured with `train` (2 cores, AVX2 fp32, one epoch each,
    interleaved, images/s, whole batch -> slices): cnn-small at batch 64 5,411-5,707 ->
    8,404-9,595, at batch 256 8,246-8,276 -> 10,134-11,672; mlp 31,647-34,508 -> 44,918-53,512;
    linear 46,564-49,600 -> 61,173-64,341. With OpenMP's default spinning the waits are cheap
    and slices gain nothing (cnn-small 8,174-9,214 -> 8,185-9,716) or lose (linear ~125,000 ->
    55,000-65,000, mlp 58,000 -> 42,000), so they are used only with passive waiting.

    The sum of the slices' gradients (weights n_slice / n) is the batch's gradient, summed in a
    fixed order, so a seed still fixes the run for a given thread count. Batch-norm layers meet
    across the slices to normalise with the whole batch's statistics (synced_batchnorm).
    """

    def __init__(self, parts: int):
        self.parts = parts
        self.pool = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="batch-part")

    def gradients(
        self, loss_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        params: list[nn.Parameter], xb: torch.Tensor, yb: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Set each parameter's .grad to the batch's gradient of the mean loss; return that
        loss and the logits (both detached). `loss_of(x, y)` gives one slice's mean loss and logits."""
        n = len(yb)
        count = max(1, min(self.parts, n // MIN_PART))
        bounds = [n * i // count for i in range(count + 1)]

        meeting = SliceMeeting(count, n)  # where batch-norm layers exchange their statistics

        def part(i: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
            x, y = xb[bounds[i] : bounds[i + 1]], yb[bounds[i] : bounds[i + 1]]
            with in_slice(meeting, i):
                loss, logits = loss_of(x, y)
                weighted = loss * (len(y) / n)
                return weighted.detach(), logits.detach(), torch.autograd.grad(weighted, params, allow_unused=True)

        futures = [self.pool.submit(part, i) for i in range(1, count)]
        results, errors = [], []
        for run in (lambda: part(0), *(future.result for future in futures)):  # wait for every slice
            try:
                results.append(run())
            except Exception as error:  # noqa: BLE001  raised below, once every slice has stopped
                errors.append(error)
        if errors:  # the slice that failed, not one it released from a batch-norm meeting
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        for j, p in enumerate(params):
            grads = [r[2][j] for r in results if r[2][j] is not None]
            for g in grads[1:]:
                grads[0].add_(g)  # fresh tensors from autograd.grad, summed in slice order
            p.grad = grads[0] if grads else None
        return sum(r[0] for r in results), torch.cat([r[1] for r in results])

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's ops on `count` threads inside the block, the previous count after it. Slices
    train on one thread each (the slices are the parallelism); evaluation, whose large batches
    share cores well, gets every thread back."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def waits_passively() -> bool:
    """Whether OpenMP's waiting threads sleep instead of spinning (OMP_WAIT_POLICY)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"


def batch_parts_for(model: nn.Module, device: torch.device) -> BatchParts | None:
    """Slices for a CPU run with more than one thread, passive OpenMP waiting, and a gradient
    that splits exactly (the model's batch norms are then synced, in place); None means the
    batch trains whole."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or not waits_passively() or not splits_exactly(model):
        return None
    sync_batch_norms(model)
    return BatchParts(threads)
