"""The compiled layers (mnist_core/speed/fused_layers.py) compute what torch's ops compute."""

from __future__ import annotations

import copy
import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_core.speed import fused_layers, kernel_build
from mnist_core.speed.fused_layers import (
    ConvPoolReLU, ConvPoolReLUFunction, PoolReLUFlatten, PoolReLUFlattenFunction, covers, fuse_layers,
)
from mnist_core.speed.cpu_speed import for_cpu_training, pool_before_relu
from mnist_core.engine.models import MODELS, build_model

needs_kernel = pytest.mark.skipif(kernel_build.compiler() is None and not os.environ.get("MNIST_REQUIRE_KERNEL"),
                                  reason="no C compiler on this machine")


def torch_layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    return F.relu(F.max_pool2d(F.conv2d(x, weight, bias, padding=padding), 2))


def both(x: torch.Tensor, channels: int, k: int, padding: int, bias: bool = True, seed: int = 0):
    """The kernel's and torch's outputs and weight/bias gradients for the same random layer."""
    torch.manual_seed(seed)
    weight = torch.randn(channels, 1, k, k, requires_grad=True)
    shift = torch.randn(channels, requires_grad=True) if bias else None
    params = [weight] + ([shift] if bias else [])
    grad_out = None
    results = []
    for run in ("kernel", "torch"):
        if run == "kernel":
            out = ConvPoolReLUFunction.apply(x, weight, shift, padding, fused_layers.load())
        else:
            out = torch_layer(x, weight, shift, padding)
        if grad_out is None:
            grad_out = torch.randn(out.shape)
        results.append((out, torch.autograd.grad(out, params, grad_out)))
    return results


@needs_kernel
def test_the_kernel_is_built_where_a_compiler_is():
    """CI installs a C compiler, so this is where a broken build shows (not as a silent fallback)."""
    library = fused_layers.load()
    assert library is not None, fused_layers.status()
    assert fused_layers.status().startswith("on")
    limits = [ctypes.c_int() for _ in range(3)]
    assert library.conv_pool_limits(*(ctypes.byref(v) for v in limits)) == 1
    assert [v.value for v in limits] == [fused_layers.MAX_CHANNELS, fused_layers.MAX_SIDE, fused_layers.MAX_KERNEL]


@needs_kernel
@pytest.mark.parametrize(("channels", "k", "padding", "side"), [
    (16, 3, 1, 28),  # cnn-small's first layer
    (8, 5, 0, 28),  # cnn-sprint's: another kernel size, no padding
    (24, 3, 2, 27),  # the generic path; an odd side: the last conv row and column are dropped by the pooling, as torch does
    (64, 7, 3, 20),
    (16, 3, 1, (28, 20)),  # not square
    (10, 5, 0, 28),  # cnn-classic's: 10 channels, computed as 16 with zero filters
    (3, 3, 1, 12),
])
def test_values_and_gradients_match_torch(channels, k, padding, side):
    height, width = side if isinstance(side, tuple) else (side, side)
    x = torch.randn(5, 1, height, width)
    (out, grads), (expected, expected_grads) = both(x, channels, k, padding)
    assert out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_ties_nan_and_dead_units_follow_torch():
    """Zero weights make all four pixels of every window tie (torch takes the first, whose
    image patch then gets the gradient); a NaN pixel gives NaN outputs where torch does, and
    passes their gradient as torch's ReLU does (it stops only at values <= 0); negative maxima
    pass none."""
    x = torch.rand(3, 1, 28, 28)
    weight = torch.zeros(16, 1, 3, 3, requires_grad=True)
    shift = torch.rand(16, requires_grad=True)
    grad_out = torch.randn(3, 16, 14, 14)
    out = ConvPoolReLUFunction.apply(x, weight, shift, 1, fused_layers.load())
    expected = torch_layer(x, weight, shift, 1)
    assert torch.equal(out, expected)
    got = torch.autograd.grad(out, [weight, shift], grad_out)
    want = torch.autograd.grad(expected, [weight, shift], grad_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    x = torch.randn(2, 1, 28, 28)
    x[0, 0, 10, 10] = float("nan")
    (out, grads), (expected, expected_grads) = both(x, 16, 3, 1)
    assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().any()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    # the weights' gradient is NaN for both (0 x NaN); the bias's is finite and counts the NaN windows' gradient
    torch.testing.assert_close(grads[0], expected_grads[0], rtol=1e-4, atol=1e-4, equal_nan=True)
    assert torch.isfinite(expected_grads[1]).all()
    torch.testing.assert_close(grads[1], expected_grads[1], rtol=1e-4, atol=1e-4)

    weight = -torch.ones(8, 1, 3, 3, requires_grad=True)  # a positive image, negative weights: all dead
    out = ConvPoolReLUFunction.apply(torch.rand(2, 1, 28, 28) + 0.1, weight, None, 1, fused_layers.load())
    assert torch.equal(out, torch.zeros_like(out))
    (grad,) = torch.autograd.grad(out.sum(), [weight])
    assert torch.equal(grad, torch.zeros_like(grad))


@needs_kernel
def test_the_forward_does_not_depend_on_the_thread_count():
    layer = ConvPoolReLU(nn.Conv2d(1, 16, 3, padding=1))
    x = torch.randn(9, 1, 28, 28)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
        torch.set_num_threads(2)
        two = layer(x)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)


def test_cases_the_kernel_does_not_take_run_as_torch_ops():
    """An input gradient (saliency) or a shape past the kernel's limits: torch's ops, which give
    what the unfused layers give, bit for bit."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 16, 3, padding=1)
    layer = ConvPoolReLU(conv)
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, torch_layer(x, conv.weight, conv.bias, 1))
    (grad_x,) = torch.autograd.grad(out.sum(), [x])
    assert grad_x.abs().sum() > 0
    big = torch.randn(2, 1, 40, 40)
    assert torch.equal(layer(big), torch_layer(big, conv.weight, conv.bias, 1))
    assert not layer.fits(torch.randn(2, 1, 28, 28, dtype=torch.float64))
    assert not layer.fits(torch.randn(0, 1, 28, 28))


@needs_kernel
def test_under_autocast_the_first_layer_runs_its_fp32_kernel():
    """bf16 autocast: the kernel computes in fp32 (the next convolution casts to bf16), so its
    output is the fp32 layer's, not a bf16 approximation, and gradients reach the weights."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 16, 3, padding=1)
    layer = ConvPoolReLU(conv)
    x = torch.randn(4, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.fits(x)
        out = layer(x)
        after = nn.functional.conv2d(out, torch.randn(8, 16, 3, 3))
    assert out.dtype == torch.float32 and after.dtype == torch.bfloat16
    torch.testing.assert_close(out, torch_layer(x, conv.weight, conv.bias, 1), rtol=1e-5, atol=1e-5)
    after.float().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


@needs_kernel
def test_only_a_leading_one_channel_conv_pool_relu_is_fused_and_names_stay():
    for name in ("cnn-small", "cnn-sprint", "cnn-classic"):  # 16 channels 3x3 padded; 8 and 10 channels 5x5
        fast = for_cpu_training(build_model(name))
        assert [type(m).__name__ for m in fast.features][:4] == ["ConvPoolReLU", "Identity", "Identity", "Conv2d"]
        assert list(fast.state_dict()) == list(build_model(name).state_dict())
    for name in MODELS:  # every other registered model keeps its first layer: BN first, or no convolution
        if name not in ("cnn-small", "cnn-sprint", "cnn-classic"):
            plain = pool_before_relu(build_model(name).features)
            assert type(fuse_layers(plain)[0]) is type(plain[0]), name
    assert not covers(nn.Conv2d(1, 16, 3, stride=2), nn.MaxPool2d(2))
    assert not covers(nn.Conv2d(1, 16, 3, padding=1), nn.MaxPool2d(3))
    assert not covers(nn.Conv2d(1, 16, (3, 5)), nn.MaxPool2d(2))
    assert not covers(nn.Conv2d(1, 16, 3, padding=1, padding_mode="reflect"), nn.MaxPool2d(2))
    assert not covers(nn.Conv2d(2, 16, 3), nn.MaxPool2d(2))


@needs_kernel
def test_a_fused_cnn_small_trains_as_the_registered_one():
    """Five Adam steps of cnn-small: the fused copy's weights stay within float rounding."""
    torch.manual_seed(0)
    plain = build_model("cnn-small")
    fast = for_cpu_training(copy.deepcopy(plain))
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for model in (plain, fast):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(5):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    for (label, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=label)


def test_build_is_cached_and_a_missing_compiler_is_said(tmp_path, monkeypatch):
    if kernel_build.compiler() is not None:
        first = kernel_build.build(tmp_path)
        stamp = first.stat().st_mtime_ns
        assert kernel_build.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
        assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial file left behind
    monkeypatch.setattr(kernel_build, "compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        kernel_build.build(tmp_path / "other")


@needs_kernel
def test_a_new_build_forgets_builds_unused_for_a_month(tmp_path):
    stale, recent = tmp_path / "fused_layers-0000000000000000.so", tmp_path / "fused_layers-1111111111111111.so"
    abandoned = tmp_path / "tmpabc.so.partial"
    for path in (stale, recent, abandoned):
        path.write_bytes(b"an older build")
    month_ago = time.time() - 31 * 86400
    for path in (stale, abandoned):
        os.utime(path, (month_ago, month_ago))
    built = kernel_build.build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([built.name, recent.name])


@needs_kernel
def test_a_compiler_error_is_said_and_leaves_nothing(tmp_path, monkeypatch):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C")
    monkeypatch.setattr(kernel_build, "SOURCE", broken)
    with pytest.raises(RuntimeError, match="the C compiler failed"):
        kernel_build.build(tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_without_the_kernel_training_runs_on_torch_ops(tmp_path):
    """A process that cannot build the kernel (here: it is turned off) still trains cnn-small,
    and the command line's early background build honours the switch too (nothing compiled)."""
    code = ("from mnist_core.speed import kernel_build; kernel_build.start().join(); "
            "import torch; from mnist_core.speed import fused_layers; from mnist_core.speed.cpu_speed import for_cpu_training; "
            "from mnist_core.engine.models import build_model; m = for_cpu_training(build_model('cnn-small')); "
            "m(torch.randn(4, 1, 28, 28)).sum().backward(); print(type(m.features[0]).__name__, fused_layers.status())")
    env = {**os.environ, "MNIST_FUSED_KERNEL": "0", "MNIST_KERNEL_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Conv2d off (MNIST_FUSED_KERNEL=0)"  # the registered layers, unfused
    assert not list(tmp_path.iterdir())


@needs_kernel
def test_scoring_many_images_goes_through_the_compiled_layer_with_the_plain_models_answers():
    from mnist_core.speed.cpu_speed import for_cpu_inference
    from mnist_core.engine.data import normalise
    from mnist_core.engine.evaluate import predict_proba
    from tests.synthetic import synthetic_mnist

    torch.manual_seed(0)
    model = build_model("cnn-small").eval()
    assert isinstance(for_cpu_inference(model).features[0], ConvPoolReLU)
    assert isinstance(model.features[0], nn.Conv2d)  # the caller's model keeps its layers
    images = synthetic_mnist(n_train=10, n_test=300).test_images
    with torch.inference_mode():
        plain = torch.softmax(model(normalise(images)), dim=1)
    probabilities = predict_proba(model, images)
    torch.testing.assert_close(probabilities, plain, rtol=1e-4, atol=1e-5)
    assert torch.equal(probabilities.argmax(1), plain.argmax(1))


def pooled_both(x: torch.Tensor):
    """The pool-ReLU-flatten kernel's and torch's outputs and input gradients."""
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = PoolReLUFlattenFunction.apply(x, fused_layers.load())
    expected = torch.flatten(F.relu(F.max_pool2d(x, 2)), 1)
    grad_out = torch.randn(expected.shape)
    (grad,) = torch.autograd.grad(out, [x], grad_out)
    (expected_grad,) = torch.autograd.grad(expected, [x], grad_out)
    return out, grad, expected, expected_grad


@needs_kernel
@pytest.mark.parametrize("shape", [(5, 32, 14, 14), (3, 8, 7, 7), (2, 16, 5, 6), (4, 128, 7, 7), (1, 8, 2, 2)])
def test_pool_relu_flatten_is_torchs_exactly(shape):
    """Only comparisons and copies: the same numbers bit for bit, and the input's gradient
    channels-last (as the convolution before it wants it), zeros in a row or column the
    pooling dropped included."""
    torch.manual_seed(0)
    out, grad, expected, expected_grad = pooled_both(torch.randn(*shape))
    assert torch.equal(out, expected) and out.is_contiguous()
    assert torch.equal(grad, expected_grad) and grad.is_contiguous(memory_format=torch.channels_last)


@needs_kernel
def test_pool_relu_flatten_ties_nan_and_dead_units_follow_torch():
    ties = torch.zeros(2, 16, 6, 6) + torch.rand(1, 16, 1, 1)  # four equal pixels per window, positive
    nan = torch.randn(2, 16, 6, 6)
    nan[0, 3, 2, 3] = float("nan")
    dead = -torch.rand(2, 16, 6, 6)
    for x in (ties, nan, dead):
        out, grad, expected, expected_grad = pooled_both(x)
        torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0, equal_nan=True)
    assert out.abs().sum() == 0 and grad.abs().sum() == 0  # all dead: no output, no gradient


def test_pool_relu_flatten_runs_as_torch_ops_where_the_kernel_does_not_fit():
    layer = PoolReLUFlatten()
    for x in (torch.randn(2, 16, 6, 6),  # not channels-last
              torch.randn(2, 12, 6, 6).contiguous(memory_format=torch.channels_last),  # 12 channels
              torch.randn(2, 16, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)):
        assert not layer.fits(x)
        assert torch.equal(layer(x), torch.flatten(F.relu(F.max_pool2d(x, 2)), 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 map (what a convolution gives under autocast)
        assert not layer.fits(torch.randn(2, 16, 6, 6, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last))


@needs_kernel
def test_which_models_get_which_kernel():
    """The last pooling of cnn-small, cnn-fast, cnn-best and cnn-classic (after pooling moves
    before ReLU) is fused; cnn-sprint's has batch norm between, the MLPs have none. Names stay.
    (cnn-classic's map has 20 channels, which the kernel does not take: it runs torch's ops.)"""
    layers = {name: [type(m).__name__ for m in for_cpu_training(build_model(name)).features] for name in MODELS}
    for name in MODELS:
        fused = "PoolReLUFlatten" in layers[name]
        assert fused == (name in ("cnn-small", "cnn-fast", "cnn-best", "cnn-classic")), (name, layers[name])
        if fused:
            at = layers[name].index("PoolReLUFlatten")
            assert layers[name][at + 1 : at + 3] == ["Identity", "Identity"]
        assert list(for_cpu_training(build_model(name)).state_dict()) == list(build_model(name).state_dict())
    assert layers["cnn-small"][:8] == ["ConvPoolReLU", "Identity", "Identity", "Conv2d", "PoolReLUFlatten",
                                       "Identity", "Identity", "Linear"]
    classic = for_cpu_training(build_model("cnn-classic")).to(memory_format=torch.channels_last)
    maps = []
    classic.features[5].register_forward_hook(lambda module, inputs, output: maps.append(inputs[0]))
    classic(torch.randn(2, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    assert maps[0].shape[1] == 20 and not PoolReLUFlatten.fits(maps[0])
