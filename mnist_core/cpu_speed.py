"""CPU training made faster without changing what is computed: layer rewrites, and an allocator
that keeps the memory a training step frees.

ReLU followed by 2x2 max-pooling gives exactly the same values and gradients as pooling first
and ReLU after (both are monotone), and the latter does the ReLU and its backward on a quarter
of the pixels. Profiled on a 2-core fp32-only CPU (cnn-small, batch 64, channels-last), the
first pair went from ~5 ms to ~2 ms a step.

Tried and dropped: computing the one-channel first convolution as an im2col matrix product.
Alone it looked 3x faster than oneDNN; inside a real training step it was 0-15% slower.
The rewritten model keeps every parameter under the same name, so its state dict is the
registered model's, and `train` hands back the registered structure.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from torch import nn

# glibc mallopt() parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_AT_TOP = 64 << 20  # free memory at the heap's top kept for the next step, not given back
FROM_HEAP_BELOW = 32 << 20  # blocks under this come from the heap, not from their own mmap


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
    for name, module in zip(layers._modules, modules):  # same names, so parameters keep theirs
        swapped.add_module(name, module)
    return swapped


def for_cpu_training(model: nn.Module) -> nn.Module:
    """Apply the rewrite to every Sequential child of `model`, in place."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Sequential):
            setattr(model, name, pool_before_relu(child))
    return model


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees, for the next step to reuse.

    By default glibc gives a freed block back to the kernel once the free space at the heap's
    top passes a few MB, so every step maps its activations afresh and the kernel zero-fills
    each page on first touch. Measured (AVX2 fp32, 2 threads, per step): cnn-small at batch 64,
    2,100-2,400 page faults and 5,500-5,800 images/s; kept, none and 8,400-10,200 (+50-75%);
    cnn-sprint +26%, cnn-best 27,000-32,000 faults a step and +29-33%. The cost is memory kept
    between steps: at most KEEP_AT_TOP of free heap (cnn-best's peak grew 14-82 MB). Applies to
    the whole process; a no-op returning False where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_TRIM_THRESHOLD, KEEP_AT_TOP) == 1 and mallopt(M_MMAP_THRESHOLD, FROM_HEAP_BELOW) == 1
