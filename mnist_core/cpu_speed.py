"""Layer rewrites that make CPU training faster without changing what is computed.

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

from torch import nn


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
