"""Layers a CPU training step runs as compiled kernels (kernels/fused_layers.c): a network's
first layer (a one-channel convolution, 2x2 max-pooling and ReLU) and its last pooling (2x2
max-pooling, ReLU and flattening), forward and backward.

Why: in cnn-small's training step the first trio was a third of the time, and almost all of
it was memory, not arithmetic. oneDNN writes the batch's full-size feature map (3.2 MB at
batch 64), max-pooling reads it back, and its backward zero-fills a map as large again for the
one-channel convolution's weight gradient to read. The kernel goes one image at a time, so the
full-size map never leaves a core's cache: profiled in a real step (2 cores held to AVX2 fp32),
the trio's forward and backward went from ~3 ms to ~1.2 ms. The last pooling, ReLU and
flatten then cost 14% of the step: a zero fill, two layout changes (channels-last to the
flatten's order, and back for the gradient) and a ReLU backward across them; as one kernel,
each element is read and written once (1.07x images/s).

The kernels are C, compiled once per machine with the system's C compiler (kernel_build) and
loaded with ctypes. They run their loops on OpenMP, which in torch's process is torch's own
runtime, so they share torch's threads instead of fighting them (a numba kernel tried earlier
lost its gain to torch's spinning threads holding the second core). Where there is no
compiler nothing is fused; for a case a kernel does not cover (a gradient for the input
images, a dtype, layout or shape outside its limits) a fused layer runs torch's ops. The
first layer's values match torch's up to float rounding (it adds a pixel's products in its
own order); the pooling's are the same bit for bit.
"""

from __future__ import annotations

import ctypes
import threading

import torch
import torch.nn.functional as F
from torch import nn

from mnist_core.speed import kernel_build
from mnist_core.speed.kernel_build import compile_flags

_lock = threading.Lock()
_state: dict[str, object] = {}  # "library" (ctypes.CDLL or None) and "status" once loading was tried


def load() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use (about half a second); None, with the reason in
    `status()`, where they cannot be built. Tried once per process."""
    with _lock:
        if "status" in _state:
            return _state["library"]  # type: ignore[return-value]
        try:
            library = ctypes.CDLL(str(kernel_build.library_path()))
            pointer, size = ctypes.c_void_p, ctypes.c_int
            library.conv_pool_forward.argtypes = [pointer] * 5 + [size] * 7
            library.conv_pool_forward.restype = None
            library.conv_pool_backward.argtypes = [pointer] * 5 + [size] * 7
            library.conv_pool_backward.restype = ctypes.c_int
            library.pool_relu_flatten_forward.argtypes = [pointer] * 3 + [size] * 5
            library.pool_relu_flatten_forward.restype = None
            library.pool_relu_flatten_backward.argtypes = [pointer] * 3 + [size] * 5
            library.pool_relu_flatten_backward.restype = None
            status = f"on, {' '.join(f for f in compile_flags() if f.startswith('-march')) or 'generic build'}"
        except (RuntimeError, OSError, AttributeError) as error:  # not built or turned off; a bad file
            library, status = None, f"off ({error})"
        _state["library"], _state["status"] = library, status
        return library


def status() -> str:
    """'on, -march=...' or 'off (why)': for the bench's header and the CLI's profile."""
    load()
    return str(_state["status"])


MAX_CHANNELS, MAX_SIDE, MAX_KERNEL = 64, 40, 7  # what kernels/fused_layers.c's conv_pool_limits says


def plain_pool(pool: nn.Module) -> bool:
    """A 2x2 max-pool with stride 2, no padding or dilation, rounding down: the kernels' pooling."""
    return (
        isinstance(pool, nn.MaxPool2d) and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
        and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1)) and not pool.ceil_mode
        and not pool.return_indices
    )


def covers(conv: nn.Conv2d, pool: nn.Module) -> bool:
    """Whether the first kernel computes this convolution followed by this pooling: one input
    channel, up to 64 output channels, a square kernel up to 7, stride and dilation 1, zero
    padding; a plain 2x2 max-pool."""
    k = conv.kernel_size[0]
    padding = conv.padding
    return (
        conv.in_channels == 1 and conv.groups == 1 and conv.out_channels <= MAX_CHANNELS
        and conv.kernel_size == (k, k) and k <= MAX_KERNEL
        and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
        and isinstance(padding, tuple) and padding[0] == padding[1] and plain_pool(pool)
    )


class ConvPoolReLUFunction(torch.autograd.Function):
    """Forward and backward through the compiled kernel; no gradient for the input image."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                library: ctypes.CDLL) -> torch.Tensor:
        n, _, h, w = x.shape
        c, _, k, _ = weight.shape
        blocks = -(-c // 8) * 8  # the kernel's channels: zero filters up to a multiple of 8 (cnn-classic's 10)
        images = x.detach().reshape(n, h, w).contiguous()
        taps = F.pad(weight.detach().reshape(c, k * k).t(), (0, blocks - c)).contiguous()
        shift = F.pad(bias.detach(), (0, blocks - c)) if bias is not None else torch.zeros(blocks)
        ho, wo = (h + 2 * padding - k + 1) // 2, (w + 2 * padding - k + 1) // 2
        out = torch.empty(n, ho, wo, blocks)
        codes = torch.empty(n, ho, wo, blocks, dtype=torch.uint8)
        library.conv_pool_forward(images.data_ptr(), taps.data_ptr(), shift.contiguous().data_ptr(), out.data_ptr(),
                                  codes.data_ptr(), n, h, w, blocks, k, padding, torch.get_num_threads())
        ctx.save_for_backward(images, codes, weight)
        ctx.padding, ctx.library, ctx.has_bias = padding, library, bias is not None
        if blocks != c:
            out = out[..., :c].contiguous()
        return out.permute(0, 3, 1, 2)  # N x C x Ho x Wo, laid out channels-last

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        images, codes, weight = ctx.saved_tensors
        n, h, w = images.shape
        c, _, k, _ = weight.shape
        blocks = codes.shape[-1]
        grad = F.pad(grad_out.permute(0, 2, 3, 1), (0, blocks - c)).contiguous()
        taps, shift = torch.empty(k * k, blocks), torch.empty(blocks)
        if not ctx.library.conv_pool_backward(images.data_ptr(), grad.data_ptr(), codes.data_ptr(), taps.data_ptr(),
                                              shift.data_ptr(), n, h, w, blocks, k, ctx.padding,
                                              torch.get_num_threads()):
            raise MemoryError("the first layer's backward could not allocate its buffers")
        grad_weight = torch.empty_like(weight).copy_(taps[:, :c].t().reshape(c, 1, k, k))  # the weight's strides
        return None, grad_weight, shift[:c] if ctx.has_bias else None, None, None


class ConvPoolReLU(nn.Module):
    """Conv2d -> MaxPool2d(2) -> ReLU as one layer that holds the convolution's own parameters
    (so a state dict keeps the convolution's names)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.padding = conv.padding[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        library = load() if self.fits(x) else None
        if library is None:
            return F.relu(F.max_pool2d(F.conv2d(x, self.weight, self.bias, padding=self.padding), 2))
        return ConvPoolReLUFunction.apply(x, self.weight, self.bias, self.padding, library)

    def fits(self, x: torch.Tensor) -> bool:
        """What the kernel takes: float32 CPU images, one channel, not too large, and no
        gradient wanted for the images (saliency). Under bf16 autocast it still runs, in fp32:
        the next layer casts its output to bf16 anyway, and on the AMX Xeon (its own kernels,
        interleaved) that trained cnn-small 1.19x and cnn-sprint 1.21x faster than oneDNN's
        bf16 first layer."""
        return (
            x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
            and x.dim() == 4 and x.shape[1] == 1 and len(x) > 0 and not x.requires_grad
            and max(x.shape[2], x.shape[3]) + 2 * self.padding <= MAX_SIDE
            and min(x.shape[2], x.shape[3]) + 2 * self.padding >= self.weight.shape[2] + 1
        )


class PoolReLUFlattenFunction(torch.autograd.Function):
    """2x2 max-pool, ReLU and flatten of a channels-last map through the compiled kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, library: ctypes.CDLL) -> torch.Tensor:
        n, c, h, w = x.shape
        out = torch.empty(n, c * (h // 2) * (w // 2))
        codes = torch.empty(n, h // 2, w // 2, c, dtype=torch.uint8)
        library.pool_relu_flatten_forward(x.data_ptr(), out.data_ptr(), codes.data_ptr(), n, h, w, c,
                                          torch.get_num_threads())
        ctx.save_for_backward(codes)
        ctx.shape, ctx.library = (n, c, h, w), library
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (codes,) = ctx.saved_tensors
        n, c, h, w = ctx.shape
        grad = grad_out.contiguous()
        grad_in = torch.empty(n, h, w, c)
        ctx.library.pool_relu_flatten_backward(grad.data_ptr(), codes.data_ptr(), grad_in.data_ptr(), n, h, w, c,
                                               torch.get_num_threads())
        return grad_in.permute(0, 3, 1, 2), None  # N x C x H x W, laid out channels-last


class PoolReLUFlatten(nn.Module):
    """MaxPool2d(2) -> ReLU -> Flatten as one layer (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        library = load() if self.fits(x) else None
        if library is None:
            return torch.flatten(F.relu(F.max_pool2d(x, 2)), 1)
        return PoolReLUFlattenFunction.apply(x, library)

    @staticmethod
    def fits(x: torch.Tensor) -> bool:
        """What the kernel takes: a float32 CPU map laid out channels-last (as convolutions on
        the CPU train here), channels a multiple of 8, at least 2x2. (Under autocast the map
        is bf16 and torch's ops run; pooling, ReLU and flatten keep the dtype either way.)"""
        return (
            x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and len(x) > 0
            and x.shape[1] % 8 == 0 and x.shape[2] >= 2 and x.shape[3] >= 2
            and x.is_contiguous(memory_format=torch.channels_last)
        )


def fuse_layers(layers: nn.Sequential) -> nn.Sequential:
    """`layers` (after pool_before_relu) with what the kernels cover made one layer each: a
    leading Conv2d -> MaxPool2d -> ReLU the first kernel covers (ConvPoolReLU), and every
    MaxPool2d -> ReLU -> Flatten (PoolReLUFlatten). The parts a fused layer replaces become
    Identity, so every module keeps its name and place (a state dict keeps its keys). Where
    the kernels cannot be built, nothing changes."""
    modules = list(layers)
    replaced: dict[int, nn.Module] = {}
    if len(modules) >= 3 and isinstance(modules[0], nn.Conv2d) and isinstance(modules[2], nn.ReLU) \
            and covers(modules[0], modules[1]):
        replaced.update({0: ConvPoolReLU(modules[0]), 1: nn.Identity(), 2: nn.Identity()})
    for i in range(len(modules) - 2):
        if (plain_pool(modules[i]) and isinstance(modules[i + 1], nn.ReLU) and isinstance(modules[i + 2], nn.Flatten)
                and modules[i + 2].start_dim == 1 and modules[i + 2].end_dim == -1 and i not in replaced):
            replaced.update({i: PoolReLUFlatten(), i + 1: nn.Identity(), i + 2: nn.Identity()})
    if not replaced or load() is None:  # built here, before any timed step
        return layers
    fused = nn.Sequential()
    for i, (name, module) in enumerate(zip(child_names(layers), layers)):
        fused.add_module(name, replaced.get(i, module))
    return fused


def child_names(layers: nn.Sequential) -> list[str]:
    """The names of a Sequential's layers in order, a layer used twice named twice."""
    return [name for name, _ in layers.named_modules(remove_duplicate=False) if name and "." not in name]
