"""Device choice and mixed-precision choice (mnist_core/engine/device.py)."""

from __future__ import annotations

import pytest
import torch

from mnist_core.engine.device import available_devices, describe_device, resolve_device, use_bf16

CPU = torch.device("cpu")


def test_auto_picks_cuda_then_mps_then_cpu():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_an_error_not_a_silent_fallback():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert "cuda" not in available_devices()


def test_describe_names_the_cpu_threads():
    assert describe_device(CPU).startswith("CPU (")


def test_bf16_choice_on_the_cpu():
    supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert use_bf16("fp32", CPU, convolutional=True) is False
    assert use_bf16("bf16", CPU, convolutional=False) is True
    assert use_bf16("auto", CPU, convolutional=False) is False  # tiny matmuls gain nothing
    assert use_bf16("auto", CPU, convolutional=True) is supported
    assert use_bf16("auto", torch.device("mps"), convolutional=True) is False
