"""The training loop (mnist_core/engine/train.py) on tiny synthetic data."""

from __future__ import annotations

import threading

import pytest
import torch

from mnist_core.engine.config import TrainConfig
from mnist_core.engine.train import batch_bounds, random_affine, train
from tests.synthetic import synthetic_mnist

DATA = synthetic_mnist()


def weights(result) -> list[torch.Tensor]:
    return [t.clone() for t in result.model.state_dict().values()]


def test_learns_the_synthetic_task_and_reports_events():
    steps, epochs = [], []
    result = train(TrainConfig(model="mlp", epochs=2, batch_size=32, lr=1e-3), DATA,
                   on_step=steps.append, on_epoch=epochs.append, report_every=5)
    assert result.status == "finished" and result.epochs_done == 2
    assert result.test_accuracy > 0.9
    assert [e.epoch for e in epochs] == [1, 2]
    assert epochs[0].val_accuracy is not None and epochs[0].test_loss > 0
    assert steps and steps[-1].progress == pytest.approx(1.0) and steps[-1].images_per_s > 0
    assert all(a.step < b.step for a, b in zip(steps, steps[1:]))


@pytest.mark.parametrize("model", ["linear", "cnn-small", "cnn-best"])
def test_same_seed_gives_identical_weights_on_cpu(model):
    config = TrainConfig(model=model, epochs=1, batch_size=64, dropout=0.2, augment="affine", device="cpu")
    a, b = train(config, DATA), train(config, DATA)
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))
    c = train(config.replace(seed=1), DATA)
    assert not all(torch.equal(x, y) for x, y in zip(weights(a), weights(c)))


def test_huge_learning_rate_ends_as_diverged_with_advice():
    result = train(TrainConfig(model="mlp", epochs=3, lr=10.0, optimizer="sgd", momentum=0.9), DATA, report_every=1)
    assert result.status == "diverged"
    assert "Lower the learning rate" in result.message and result.epochs_done < 3


def test_cancel_from_another_thread_stops_the_run():
    cancel = threading.Event()

    def stop_after_first(event):
        cancel.set()

    result = train(TrainConfig(model="mlp", epochs=5, batch_size=16), DATA, on_step=stop_after_first,
                   cancel=cancel, report_every=1)
    assert result.status == "cancelled" and result.steps_done == 1


@pytest.mark.parametrize("schedule", ["step", "plateau", "onecycle"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "rmsprop"])
def test_every_optimizer_and_schedule_trains(optimizer, schedule):
    lrs = []
    config = TrainConfig(model="linear", epochs=2, batch_size=100, lr=0.01, optimizer=optimizer, schedule=schedule)
    result = train(config, DATA, on_step=lambda e: lrs.append(e.lr), report_every=1)
    assert result.status == "finished" and result.test_accuracy > 0.5
    if schedule in ("step", "onecycle"):
        assert len(set(lrs)) > 1  # the schedule really changed the learning rate


def test_time_budget_stops_early():
    result = train(TrainConfig(model="mlp", epochs=100, batch_size=8, time_budget_s=1), DATA)
    assert result.status == "finished" and "Time budget" in result.message and result.epochs_done < 100


def test_no_validation_split():
    result = train(TrainConfig(model="linear", val_split=0.0), DATA)
    assert result.history[0].val_accuracy is None and result.test_accuracy is not None


def test_augmentation_keeps_shape_layout_and_background():
    x = torch.full((4, 1, 28, 28), -0.4242)
    x[:, :, 10:18, 10:18] = 2.8
    x = x.contiguous(memory_format=torch.channels_last)
    out = random_affine(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out[:, :, 0, 0], torch.tensor(-0.4242), atol=1e-5)
    assert not torch.equal(out, x)


def test_a_last_batch_of_one_image_joins_the_one_before_only_for_batch_norm():
    assert batch_bounds(10, 3, fold_single=True) == [0, 3, 6, 10]  # 3, 3, 4 images
    assert batch_bounds(10, 3, fold_single=False) == [0, 3, 6, 9, 10]
    assert batch_bounds(10, 5, fold_single=True) == [0, 5, 10]
    assert batch_bounds(1, 4, fold_single=True) == [0, 1]  # nothing to join
    assert batch_bounds(0, 4, fold_single=True) == [0]


@pytest.mark.parametrize("model, steps", [("cnn-sprint", 1), ("mlp", 2)])
def test_an_epoch_ending_in_one_image_trains_every_image(model, steps):
    """cnn-sprint at a batch size that leaves one image over used to fail at the end of its
    first epoch: batch norm refuses a batch of one."""
    data = synthetic_mnist()
    n = len(data.train_labels)
    result = train(TrainConfig(model=model, epochs=1, batch_size=n - 1, val_split=0.0), data)
    assert result.status == "finished" and result.steps_done == steps
