"""mnist_core.teach.lessons: the "what just happened" note on made-up epochs, one test per branch,
and the settings a model and optimizer leave unused."""

from __future__ import annotations

import pytest

from mnist_core.engine.config import TrainConfig
from mnist_core.teach.lessons import what_happened
from mnist_core.service.store import RunRecord


def run(status: str = "finished", test_accuracy: float | None = 0.98) -> RunRecord:
    return RunRecord(id="x", config={}, status=status, message="", created=0.0, started=0.0, finished=1.0,
                     device="cpu", test_accuracy=test_accuracy, test_loss=0.1, duration_s=1.0, epochs_done=0)


def epoch(n: int, train: tuple[float, float], val: tuple[float, float] | None,
          test: tuple[float, float] = (0.1, 0.97)) -> dict:
    """One stored epoch row: (loss, accuracy) per split; no validation set when `val` is None."""
    return {"epoch": n, "train_loss": train[0], "train_accuracy": train[1],
            "val_loss": val[0] if val else None, "val_accuracy": val[1] if val else None,
            "test_loss": test[0], "test_accuracy": test[1]}


def config(**changes) -> dict:
    return TrainConfig(model="cnn-small", epochs=3, lr=1e-3).replace(**changes).to_dict()


def note(epochs, settings=None, record=None) -> str:
    return " ".join(what_happened(epochs, settings or config(), record or run()))


def test_rising_validation_loss_while_training_loss_falls_is_overfitting():
    epochs = [epoch(1, (0.30, 0.91), (0.10, 0.970)), epoch(2, (0.08, 0.975), (0.07, 0.978)),
              epoch(3, (0.03, 0.990), (0.09, 0.979))]
    text = note(epochs)
    assert "Overfitting: the validation loss was lowest after epoch 2 (0.070) and rose to 0.090" in text
    assert "turn on augmentation (affine), raise dropout to 0.25, add a little weight decay (1e-4) or stop " \
           "after epoch 2" in text
    assert "The curves show 3 epochs: the training loss fell from 0.300 to 0.030" in text


def test_a_rising_validation_loss_without_a_train_validation_gap_is_noise_not_overfitting():
    epochs = [epoch(1, (0.44, 0.886), (0.37, 0.900)), epoch(2, (0.36, 0.900), (0.361, 0.905)),
              epoch(3, (0.334, 0.908), (0.378, 0.910))]
    text = note(epochs, config(model="linear", optimizer="sgd", lr=0.1))
    assert "Overfitting:" not in text and "No sign of overfitting" in text
    assert "the noise of large steps, not memorising. Try a lower learning rate (0.033)" in text


def test_a_train_validation_gap_above_two_points_is_overfitting():
    epochs = [epoch(1, (0.30, 0.93), (0.20, 0.940)), epoch(2, (0.05, 0.990), (0.19, 0.955))]
    text = note(epochs, config(augment="affine", dropout=0.3))
    assert "ends 3.5 points above validation accuracy (95.5%): a sign of overfitting" in text
    assert "To overfit less: add a little weight decay (1e-4)." in text  # the rest is on; epoch 2 was the best
    assert "augmentation (affine)" not in text and "raise dropout" not in text


def test_training_accuracy_below_validation_after_one_epoch_is_explained_not_flagged():
    text = note([epoch(1, (0.33, 0.905), (0.06, 0.983))], config(dropout=0.25))
    assert "Training accuracy (90.5%) is below validation accuracy (98.3%). That is not a bug" in text
    assert "averaged over the epoch while the weights were still improving, and dropout and augmentation" in text
    assert "No sign of overfitting" in text and "Overfitting:" not in text
    assert "One epoch shows no trend yet" in text


def test_with_every_regulariser_on_the_advice_is_more_of_them():
    epochs = [epoch(1, (0.30, 0.93), (0.20, 0.940)), epoch(2, (0.05, 0.990), (0.19, 0.955))]
    text = note(epochs, config(augment="affine", dropout=0.3, weight_decay=1e-4))
    assert "are all on already; raise dropout or weight decay, or train fewer epochs" in text


def test_close_train_and_validation_accuracy_is_no_overfitting():
    epochs = [epoch(1, (0.2, 0.95), (0.10, 0.960)), epoch(2, (0.08, 0.975), (0.08, 0.970))]
    assert "within 2 points (97.5% and 97.0%): no sign of overfitting" in note(epochs)


def test_still_improving_suggests_more_epochs():
    epochs = [epoch(1, (0.2, 0.95), (0.10, 0.960)), epoch(2, (0.1, 0.97), (0.07, 0.975))]
    assert "Validation accuracy still rose by 1.50 points in the last epoch: more epochs should help (try 4)" \
        in note(epochs)


@pytest.mark.parametrize(("model", "advice"), [
    ("linear", "Try mlp or cnn-small"), ("mlp", "try a convolutional model (cnn-small)"),
    ("cnn-fast", "a learning-rate schedule (onecycle) or augmentation"),
])
def test_a_plateau_suggests_a_bigger_model_or_a_schedule(model, advice):
    epochs = [epoch(1, (0.30, 0.915), (0.29, 0.920)), epoch(2, (0.29, 0.918), (0.285, 0.9205))]
    assert advice in note(epochs, config(model=model))


def test_a_training_loss_that_goes_up_suggests_a_lower_learning_rate():
    epochs = [epoch(1, (0.3, 0.90), (0.25, 0.92)), epoch(2, (0.4, 0.89), (0.30, 0.91))]
    assert "The training loss went up in epoch 2" in note(epochs, config(lr=0.03))
    assert "lower learning rate (0.01)" in note(epochs, config(lr=0.03))


def test_a_diverged_run_suggests_a_learning_rate_ten_times_smaller():
    text = note([], config(lr=1.0), run("diverged", None))
    assert "NaN" in text and "ten times smaller: 0.1" in text
    after_an_epoch = note([epoch(1, (2.0, 0.2), (2.1, 0.2))], config(lr=0.5), run("diverged", None))
    assert "after epoch 1: try a learning rate ten times smaller, 0.05" in after_an_epoch


def test_without_a_validation_set_the_test_set_stands_in():
    epochs = [epoch(1, (0.2, 0.95), None, (0.10, 0.960)), epoch(2, (0.05, 0.995), None, (0.09, 0.965))]
    text = note(epochs, config(val_split=0.0))
    assert "kept no validation set" in text
    assert "above test accuracy (96.5%)" in text


def test_no_epochs_and_no_divergence_says_nothing():
    assert what_happened([], config(), run("cancelled")) == []
