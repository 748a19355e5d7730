"""Compute-device choice: CUDA, then Apple's MPS, then the CPU, as the seed guide does."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mnist_core.speed.seam import cpu_bf16


def resolve_device(requested: str = "auto") -> torch.device:
    """Map a config's device ('auto', 'cuda', 'mps', 'cpu') to one that exists here.

    Asking for a device this machine lacks is an error, not a silent fallback, so a run's
    recorded device is always the one it really used.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was requested but no CUDA GPU is available; use 'auto' or 'cpu'.")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device: MPS was requested but Apple's Metal backend is not available; use 'auto'.")
    if requested not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device: {requested!r} is not one of auto, cuda, mps, cpu.")
    return torch.device(requested)


def use_bf16(precision: str, device: torch.device, convolutional: bool) -> bool:
    """Whether to train in bfloat16 mixed precision.

    'auto' takes it where it pays: CUDA GPUs that support bf16, and CPUs whose oneDNN has bf16
    kernels, for convolutional models (there it runs about 1.5x faster; the tiny matrix products
    of linear and mlp gain nothing). Weights, the optimizer and the loss stay in float32.
    """
    if precision == "fp32" or device.type == "mps":
        return False
    if device.type == "cuda":
        return precision == "bf16" or torch.cuda.is_bf16_supported()
    return precision == "bf16" or (convolutional and cpu_bf16())


def describe_device(device: torch.device | str | None = None) -> str:
    """A short human name: the GPU's name, 'Apple MPS', or 'CPU (N threads)'."""
    device = resolve_device("auto") if device is None else torch.device(device)
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple MPS"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


def available_devices() -> list[str]:
    """Choices worth offering in a form on this machine."""
    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def cpu_header() -> str:
    """The CPU model, its core count and whether it has bf16 kernels: every benchmark's first line,
    since the same code runs 1.5x faster or slower depending on them."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    bf16 = cpu_bf16()
    return (f"CPU: {model}, {os.cpu_count()} cores, bf16 {'yes' if bf16 else 'no (fp32 only)'}; "
            f"torch {torch.__version__}")
