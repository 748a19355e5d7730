"""Lessons in place: what a finished run's curves say, in plain sentences.

Plain sentences built from a run's stored numbers (no Streamlit), so the Train page only shows
them and the tests can check every branch on made-up epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RunOutcome(Protocol):
    """What a lesson reads of a stored run (service.store.RunRecord has it): teach sits beside the
    service wing, not above it, so it names the two fields instead of importing the store."""

    status: str
    test_accuracy: float | None

GAP = 0.02  # train accuracy this far above validation accuracy (2 points) counts as overfitting
RISE = 0.02  # validation loss 2% above its best, while the training loss falls, counts too
STILL_IMPROVING = 0.001  # validation accuracy up by more than 0.1 point in the last epoch


def percent(value: float) -> str:
    return f"{value:.1%}"


def what_happened(epochs: Sequence[dict], config: dict, record: RunOutcome) -> list[str]:
    """A few sentences after a run ends: what its curves show, whether it overfit (final train
    against validation loss and accuracy; the test set stands in when there was no validation
    set), and what to try next."""
    lr = float(config.get("lr", 0.0))
    if record.status == "diverged" and not epochs:
        return [
            "The loss became NaN (not a number) before the first epoch ended: the steps were so large "
            "that the weights blew up.",
            f"Try a learning rate ten times smaller: {lr / 10:.2g}.",
        ]
    if not epochs:
        return []
    first, last = epochs[0], epochs[-1]
    sentences = [summary(first, last, len(epochs), record)]
    reference = "val" if last.get("val_accuracy") is not None else "test"
    if reference == "test":
        sentences.append(
            "This run kept no validation set (validation split 0), so the test set stands in for it "
            "below; a validation split of 0.1 lets you judge overfitting without peeking at the test set."
        )
    overfit = overfitting(epochs, reference)
    sentences += overfit or [fit_verdict(last, reference, config)]
    sentences += next_steps(epochs, config, record, reference, overfit_epoch(epochs, reference) if overfit else None)
    return sentences


def summary(first: dict, last: dict, count: int, record: RunOutcome) -> str:
    test = record.test_accuracy if record.test_accuracy is not None else last.get("test_accuracy")
    ended = f" Test accuracy: {test:.2%}." if test is not None else ""
    if count == 1:
        return (f"The curves show one epoch: an average training loss of {last['train_loss']:.3f} and a "
                f"training accuracy of {percent(last['train_accuracy'])}.{ended}")
    return (f"The curves show {count} epochs: the training loss fell from {first['train_loss']:.3f} to "
            f"{last['train_loss']:.3f} and the training accuracy rose from {percent(first['train_accuracy'])} "
            f"to {percent(last['train_accuracy'])}.{ended}")


def name(reference: str) -> str:
    return "validation" if reference == "val" else "test"


def overfit_epoch(epochs: Sequence[dict], reference: str) -> int:
    """The epoch with the lowest held-out loss: where training would best have stopped."""
    best = min(epochs, key=lambda row: row[f"{reference}_loss"])
    return int(best["epoch"])


def held_out_loss_rose(epochs: Sequence[dict], reference: str) -> bool:
    """The held-out loss ended clearly above its best while the training loss kept falling."""
    last = epochs[-1]
    best = next(row for row in epochs if row["epoch"] == overfit_epoch(epochs, reference))
    held_out = f"{reference}_loss"
    return (best["epoch"] < last["epoch"] and last[held_out] > best[held_out] * (1 + RISE)
            and last["train_loss"] < best["train_loss"])


def overfitting(epochs: Sequence[dict], reference: str) -> list[str]:
    """Sentences saying how the run overfit; empty when it did not. A rising held-out loss counts
    only while the model also does better on its training images than on held-out ones: without
    that gap, the rise is the noise of large steps, not memorising."""
    last, found = epochs[-1], []
    best_epoch = overfit_epoch(epochs, reference)
    best = next(row for row in epochs if row["epoch"] == best_epoch)
    held_out = f"{reference}_loss"
    if held_out_loss_rose(epochs, reference) and last["train_accuracy"] > last[f"{reference}_accuracy"]:
        found.append(
            f"Overfitting: the {name(reference)} loss was lowest after epoch {best_epoch} "
            f"({best[held_out]:.3f}) and rose to {last[held_out]:.3f} while the training loss kept "
            "falling. The model began to memorise the training images instead of learning digits."
        )
    gap = last["train_accuracy"] - last[f"{reference}_accuracy"]
    if gap > GAP:
        found.append(
            f"Training accuracy ({percent(last['train_accuracy'])}) ends {gap * 100:.1f} points above "
            f"{name(reference)} accuracy ({percent(last[f'{reference}_accuracy'])}): "
            + ("a sign of overfitting." if not found else "the same story.")
        )
    return found


def fit_verdict(last: dict, reference: str, config: dict) -> str:
    """No overfitting: say so, and explain a training accuracy below the held-out one."""
    train, held = last["train_accuracy"], last[f"{reference}_accuracy"]
    if train < held:
        harder = (", and dropout and augmentation make the training images harder"
                  if config.get("dropout", 0) or config.get("augment", "none") != "none" else "")
        return (
            f"Training accuracy ({percent(train)}) is below {name(reference)} accuracy ({percent(held)}). "
            "That is not a bug: training accuracy is averaged over the epoch while the weights were still "
            f"improving{harder}; {name(reference)} accuracy is measured once, at the end. No sign of overfitting."
        )
    return (f"Training and {name(reference)} accuracy are within {GAP * 100:.0f} points ({percent(train)} and "
            f"{percent(held)}): no sign of overfitting.")


def next_steps(epochs: Sequence[dict], config: dict, record: RunOutcome, reference: str,
               stop_at: int | None) -> list[str]:
    """What to try next: a lower learning rate after a divergence or a noisy loss, regularisation
    after overfitting, more epochs while still improving, else a bigger model or a schedule."""
    lr = float(config.get("lr", 0.0))
    if record.status == "diverged":
        return [f"The loss became NaN after epoch {epochs[-1]['epoch']}: try a learning rate ten times "
                f"smaller, {lr / 10:.2g}."]
    rises = [b["epoch"] for a, b in zip(epochs, epochs[1:]) if b["train_loss"] > a["train_loss"]]
    if rises:
        return [f"The training loss went up in epoch {rises[0]}: steps this large overshoot. Try a lower "
                f"learning rate ({lr / 3:.2g}) or the onecycle schedule, which lowers it as training ends."]
    if stop_at is None and held_out_loss_rose(epochs, reference):
        return [f"The {name(reference)} loss went up at the end although the model does no better on its "
                "training images: that is the noise of large steps, not memorising. Try a lower learning "
                f"rate ({lr / 3:.2g}) or the onecycle schedule."]
    if stop_at is not None:
        remedies = []
        if config.get("augment", "none") == "none":
            remedies.append("turn on augmentation (affine)")
        if float(config.get("dropout", 0.0)) < 0.25:
            remedies.append("raise dropout to 0.25")
        if float(config.get("weight_decay", 0.0)) == 0:
            remedies.append("add a little weight decay (1e-4)")
        if stop_at < epochs[-1]["epoch"]:
            remedies.append(f"stop after epoch {stop_at}, where the {name(reference)} loss was lowest")
        if not remedies:
            return ["To overfit less: augmentation, dropout and weight decay are all on already; raise "
                    "dropout or weight decay, or train fewer epochs."]
        return ["To overfit less: " + ", ".join(remedies[:-1]) + (" or " if len(remedies) > 1 else "")
                + remedies[-1] + "."]
    if len(epochs) == 1:
        return ["One epoch shows no trend yet: launch the same settings with 3 epochs to see whether "
                "the curves keep improving."]
    gain = epochs[-1][f"{reference}_accuracy"] - epochs[-2][f"{reference}_accuracy"]
    if gain > STILL_IMPROVING:
        return [f"{name(reference).capitalize()} accuracy still rose by {gain * 100:.2f} points in the last "
                f"epoch: more epochs should help (try {2 * len(epochs)})."]
    model = config.get("model", "")
    if model == "linear":
        return ["Accuracy has levelled off: a linear model cannot do much better than about 92%. "
                "Try mlp or cnn-small to see what a hidden layer or convolutions add."]
    if model == "mlp":
        return ["Accuracy has levelled off: try a convolutional model (cnn-small), which sees "
                "which pixels are neighbours."]
    return ["Accuracy has levelled off: a learning-rate schedule (onecycle) or augmentation usually "
            "gains the last few tenths of a point."]
