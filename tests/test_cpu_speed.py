"""The CPU rewrites (mnist_core/speed/cpu_speed.py) change speed, never what a model computes."""

from __future__ import annotations

import copy
import sys
import threading
import time
from functools import partial

import pytest
import torch
from torch import nn

from mnist_core.engine.config import RECIPES, TrainConfig
from mnist_core.speed import fused_layers
from mnist_core.speed.fused_layers import ConvPoolReLU
from mnist_core.speed.cpu_speed import (
    INFERENCE_ACTIVATION_BYTES, BatchParts, batch_parts_for, for_cpu_inference, for_cpu_training, inference_batch,
    keep_freed_memory, largest_activation, pool_before_relu, splits_exactly, torch_threads,
)
from mnist_core.engine.data import normalise
from mnist_core.engine.evaluate import predict_proba
from mnist_core.speed import synced_batchnorm
from mnist_core.engine.models import MODELS, build_model
from mnist_core.speed.synced_batchnorm import SyncedBatchNorm, sync_batch_norms
from mnist_core.engine.train import make_optimizer, start_session, train
from tests.synthetic import synthetic_mnist


@pytest.mark.parametrize("name", list(MODELS))
def test_rewritten_model_gives_the_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    plain = build_model(name, dropout=0.0)
    fast = for_cpu_training(copy.deepcopy(plain))
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in plain.named_parameters()]
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    for model in (plain, fast):
        model.train()
        nn.functional.cross_entropy(model(x), y).backward()
    # pooling before ReLU is exact; the compiled first layer (cnn-small's, cnn-sprint's, cnn-classic's) adds
    # in its own order
    fused = name in ("cnn-small", "cnn-sprint", "cnn-classic") and fused_layers.load() is not None
    assert isinstance(fast.features[0], ConvPoolReLU) == fused
    same = partial(torch.allclose, rtol=1e-5, atol=1e-6) if fused else torch.equal
    assert same(plain(x), fast(x))
    for (label, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert same(p.grad, q.grad), label
    plain.eval()
    fast.eval()
    assert same(plain(x), fast(x))


def test_relu_then_pool_becomes_pool_then_relu_and_nothing_else_moves():
    layers = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.MaxPool2d(2),
                           nn.ReLU(), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    kinds = [type(m).__name__ for m in pool_before_relu(layers)]
    assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "BatchNorm2d", "MaxPool2d", "ReLU"]


def test_train_hands_back_the_registered_layers():
    result = train(TrainConfig(model="cnn-small", epochs=1, batch_size=64, val_split=0.0), synthetic_mnist())
    registered = [type(m) for m in build_model("cnn-small").features]
    assert [type(m) for m in result.model.features] == registered


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_adam_adamw_and_sgd_use_their_fused_kernels_on_the_cpu(optimizer):
    params = list(nn.Linear(3, 2).parameters())
    made = make_optimizer(TrainConfig(optimizer=optimizer), params)
    assert made.defaults["fused"] is True


def test_the_first_recipe_is_the_sprint_and_every_recipe_keeps_a_validation_split():
    assert next(iter(RECIPES)) == "cnn-sprint"
    assert all(recipe.config.val_split > 0 and recipe.purpose for recipe in RECIPES.values())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_training_steps_reuse_freed_memory_instead_of_page_faulting():
    """Without keep_freed_memory, each cnn-small step at batch 64 page-faulted 1,300-2,400 times
    (its activations given back to the kernel and mapped afresh): a third of the step's time."""
    import resource

    assert keep_freed_memory()
    torch.manual_seed(0)
    model = for_cpu_training(build_model("cnn-small")).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))

    def steps(count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    steps(5)  # the first steps grow the heap to the step's working set
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    steps(20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults / 20 < 100, f"{faults / 20:.0f} page faults per step"


def loss_for(model: nn.Module):
    """What BatchParts.gradients calls per slice: the slice's mean loss and logits."""
    def loss_of(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(a)
        return nn.functional.cross_entropy(logits, b), logits
    return loss_of


@pytest.fixture
def two_threads(monkeypatch):
    """Two torch threads whose OpenMP waits sleep, as in the dashboard's workers."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_models_without_active_dropout_split_exactly():
    for name in ("cnn-small", "linear", "cnn-sprint", "cnn-fast"):
        assert splits_exactly(build_model(name)), name
    assert not splits_exactly(build_model("cnn-small", dropout=0.3))  # one shared random stream
    assert not splits_exactly(build_model("cnn-best", dropout=0.25))  # its default dropout
    assert splits_exactly(build_model("cnn-best", dropout=0.0))  # its batch norms are synced
    assert not splits_exactly(nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2)))  # not synced

    class OwnNorm(nn.BatchNorm2d):  # a subclass may compute something else: never synced, never sliced
        pass

    own = nn.Sequential(nn.Conv2d(1, 2, 1), OwnNorm(2))
    assert not splits_exactly(own) and not sync_batch_norms(own) and type(own[1]) is OwnNorm


@pytest.mark.parametrize("name", ["cnn-small", "cnn-sprint", "cnn-fast"])
@pytest.mark.parametrize("size", [64, 37, 20])
def test_the_parts_gradient_and_batch_statistics_are_the_whole_batchs(name, size):
    torch.manual_seed(0)
    whole_model = for_cpu_training(build_model(name))
    model = copy.deepcopy(whole_model)
    assert sync_batch_norms(model)
    params = list(model.parameters())
    x, y = torch.randn(size, 1, 28, 28), torch.randint(0, 10, (size,))
    whole_logits = whole_model(x)
    whole = nn.functional.cross_entropy(whole_logits, y)
    expected = torch.autograd.grad(whole, list(whole_model.parameters()))

    parts = BatchParts(3)
    try:
        with torch_threads(1):
            loss, logits = parts.gradients(loss_for(model), params, x, y)
    finally:
        parts.close()
    assert torch.allclose(loss, whole, atol=1e-6)
    assert torch.allclose(logits, whole_logits, atol=1e-5) and logits.shape == (size, 10)
    for p, g in zip(params, expected):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4)
    for (label, a), b in zip(whole_model.named_buffers(), model.buffers()):  # running statistics, once
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), label


def test_a_slice_that_fails_releases_the_others_and_its_error_comes_back(monkeypatch):
    """A slice waiting for batch statistics that never come would hang the worker: the failing
    slice releases it, and the caller sees the failure itself."""
    monkeypatch.setattr(synced_batchnorm, "MEET_TIMEOUT_S", 20.0)
    model = for_cpu_training(build_model("cnn-sprint"))
    sync_batch_norms(model)
    main, whole_slice = threading.current_thread(), loss_for(model)

    def loss_of(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if threading.current_thread() is not main:
            raise ValueError("this slice broke")
        return whole_slice(a, b)

    parts = BatchParts(2)
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="this slice broke"), torch_threads(1):
            parts.gradients(loss_of, list(model.parameters()), torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    finally:
        parts.close()
    assert time.perf_counter() - start < 10


def test_one_image_with_batch_norm_is_refused_in_slices_as_it_is_whole():
    model = for_cpu_training(build_model("cnn-sprint"))
    x, y = torch.randn(1, 1, 28, 28), torch.randint(0, 10, (1,))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(x)
    sync_batch_norms(model)

    parts = BatchParts(2)
    try:
        with pytest.raises(ValueError, match="more than 1 value per channel"), torch_threads(1):
            parts.gradients(loss_for(model), list(model.parameters()), x, y)
    finally:
        parts.close()


def test_torch_threads_gives_the_thread_count_back_even_after_an_error(two_threads):
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("a step failed")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("name", ["cnn-small", "cnn-sprint"])
def test_a_run_in_parts_is_fixed_by_its_seed_and_learns(two_threads, name):
    config = TrainConfig(model=name, epochs=1, batch_size=64, lr=3e-3, val_split=0.0)
    data = synthetic_mnist()
    session = start_session(config, data)
    assert session.parts is not None
    session.parts.close()
    first, second = train(config, data), train(config, data)
    assert torch.get_num_threads() == 2
    for (key, p), q in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(p, q), key
    assert first.test_accuracy > 0.5


def test_dropout_spinning_waits_or_a_single_thread_train_the_batch_whole(two_threads, monkeypatch):
    cpu = torch.device("cpu")
    parts = batch_parts_for(build_model("cnn-small"), cpu)
    assert isinstance(parts, BatchParts) and parts.parts == 2
    parts.close()
    assert batch_parts_for(build_model("cnn-best", dropout=0.25), cpu) is None
    sprint = build_model("cnn-sprint")
    parts = batch_parts_for(sprint, cpu)
    assert isinstance(parts, BatchParts)
    parts.close()
    norms = [m for m in sprint.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, SyncedBatchNorm) for m in norms)
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert batch_parts_for(build_model("cnn-small"), cpu) is None
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    torch.set_num_threads(1)
    assert batch_parts_for(build_model("cnn-small"), cpu) is None


def test_inference_batches_shrink_with_the_largest_activation_on_the_cpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    sizes = {name: largest_activation(build_model(name)) for name in ("linear", "cnn-sprint", "cnn-small", "cnn-best")}
    assert sizes["cnn-best"] == 32 * 24 * 24 and sizes["cnn-small"] == 16 * 28 * 28 and sizes["cnn-sprint"] == 8 * 24 * 24
    batches = {name: inference_batch(build_model(name), cpu, 2000) for name in sizes}
    assert batches["linear"] == 2000 > batches["cnn-sprint"] > batches["cnn-small"] > batches["cnn-best"] >= 16
    assert all(4 * sizes[name] * batches[name] <= INFERENCE_ACTIVATION_BYTES for name in sizes if name != "linear")
    assert inference_batch(build_model("cnn-best"), cuda, 2000) == 2000  # the device is only compared, never used


def test_scoring_many_images_uses_a_channels_last_copy_and_gives_the_plain_forwards_probabilities():
    torch.manual_seed(0)
    model = build_model("cnn-fast")  # batch norm: its running statistics must come through the copy
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images = synthetic_mnist(n_train=10, n_test=300).test_images
    before = copy.deepcopy(model.state_dict())
    fast = for_cpu_inference(model)
    assert fast is not model and next(fast.parameters()).is_contiguous(memory_format=torch.channels_last)
    mlp = build_model("mlp")
    assert for_cpu_inference(fast) is fast and for_cpu_inference(mlp) is mlp  # nothing to convert: no copy
    probabilities = predict_proba(model, images)
    with torch.inference_mode():
        plain = torch.softmax(model.eval()(normalise(images)), dim=1)
    assert torch.allclose(probabilities, plain, atol=1e-5) and torch.equal(probabilities.argmax(1), plain.argmax(1))
    state = model.state_dict()  # the caller's model is as it was: layout (safetensors saves it) and values
    assert all(state[k].is_contiguous() and torch.equal(state[k], before[k]) for k in before)


def test_scoring_many_images_goes_in_batches_the_size_of_inference_batch():
    model, sizes = build_model("cnn-best"), []
    batch = inference_batch(model, torch.device("cpu"), 2000)
    model.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))  # the copy keeps it
    count = 2 * batch + 17
    predict_proba(model, synthetic_mnist(n_train=10, n_test=count).test_images)
    assert batch < 200 and sizes[0] == 1 and sizes[1:] == [batch, batch, 17]  # sizes[0]: the measuring pass
