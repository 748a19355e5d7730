"""The training loop: resident tensors, permutation batches, events, cancellation.

Unlike the seed notes' DataLoader pipeline, the whole normalised training set is one tensor on
the device and a batch is an index into it: no per-image Python objects, no per-item transforms.
That keeps the CPU busy with the model instead of with data plumbing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mnist_core.config import TrainConfig
from mnist_core.data import Mnist, normalise
from mnist_core.device import resolve_device, use_bf16
from mnist_core.models import Classifier, build_model, is_convolutional

EVAL_BATCH = 2000
# Chance-level cross-entropy is ln 10 = 2.3. A batch loss above this means the weights have
# blown up (the true digit got a probability below e^-1000); no sane run gets there.
DIVERGED_LOSS = 1e3


@dataclass
class StepEvent:
    """Reported every few optimisation steps (one step = one batch)."""

    step: int
    epoch: int
    loss: float
    accuracy: float
    lr: float
    images_per_s: float
    elapsed: float
    progress: float  # 0..1 of the whole run
    eta_s: float


@dataclass
class EpochEvent:
    """Reported after each full pass over the training split."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    test_loss: float
    test_accuracy: float
    elapsed: float


@dataclass
class TrainResult:
    status: str  # finished, diverged or cancelled
    message: str
    model: Classifier  # on the CPU, in eval mode
    device: str
    epochs_done: int
    steps_done: int
    elapsed: float
    images_per_s: float
    mixed_precision: bool = False
    test_loss: float | None = None
    test_accuracy: float | None = None
    history: list[EpochEvent] = field(default_factory=list)


class Splits:
    """Normalised train/validation/test tensors resident on one device."""

    def __init__(self, data: Mnist, val_split: float, seed: int, device: torch.device, channels_last: bool):
        order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(seed))
        n_val = int(round(len(order) * val_split))
        train_idx, val_idx = order[n_val:], order[:n_val]

        def put(images: torch.Tensor) -> torch.Tensor:
            x = normalise(images).to(device)
            return x.contiguous(memory_format=torch.channels_last) if channels_last else x

        self.x_train, self.y_train = put(data.train_images[train_idx]), data.train_labels[train_idx].to(device)
        self.x_val, self.y_val = put(data.train_images[val_idx]), data.train_labels[val_idx].to(device)
        self.x_test, self.y_test = put(data.test_images), data.test_labels.to(device)


def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random rotations (±10°), scalings (±10%) and shifts (±2 px) for a whole batch at once.

    Augmentation shows the model digits it has not seen exactly, which fights overfitting.
    """
    n = x.shape[0]
    rand = torch.rand(n, 4, generator=generator).to(x.device) * 2 - 1
    angle = rand[:, 0] * math.radians(10)
    scale = 1 + rand[:, 1] * 0.1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, rand[:, 2] * (2 / 14)], 1), torch.stack([sin, cos, rand[:, 3] * (2 / 14)], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    background = x.amin()  # the normalised value of a black pixel
    out = F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(memory_format=torch.channels_last) else out


def make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
    """The chosen optimizer; None for 'scratch-sgd', whose update is written out in `scratch_sgd_step`."""
    lr, wd = config.lr, config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd, nesterov=config.momentum > 0)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    return None


@torch.no_grad()
def scratch_sgd_step(params: list[nn.Parameter], lr: float, weight_decay: float = 0.0) -> None:
    """The seed notebook's hand-written step: subtract lr x gradient, then zero the gradient."""
    for p in params:
        if p.grad is None:
            continue
        grad = p.grad + weight_decay * p if weight_decay else p.grad
        p -= lr * grad
        p.grad = None


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer | None, steps_per_epoch: int):
    """The learning-rate schedule; OneCycle steps per batch, the others per epoch."""
    if optimizer is None or config.schedule == "none":
        return None
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.25
    )


@torch.inference_mode()
def evaluate_loss_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a resident split, in large batches."""
    if len(y) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    total_loss, correct = torch.zeros((), device=y.device), torch.zeros((), device=y.device)
    for start in range(0, len(y), EVAL_BATCH):
        xb, yb = x[start : start + EVAL_BATCH], y[start : start + EVAL_BATCH]
        with torch.autocast(device_type=y.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(xb)
        total_loss += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    return float(total_loss) / len(y), float(correct) / len(y)


def train(
    config: TrainConfig,
    data: Mnist,
    on_step: Callable[[StepEvent], None] | None = None,
    on_epoch: Callable[[EpochEvent], None] | None = None,
    cancel: threading.Event | None = None,
    report_every: int = 10,
) -> TrainResult:
    """Train `config.model` on `data` and return the model with its final test metrics.

    Deterministic on the CPU for a given seed: the seed fixes the weights' initial values,
    the validation split, the batch order, dropout and augmentation.
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.dropout)
    channels_last = device.type == "cpu" and is_convolutional(model)
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    splits = Splits(data, config.val_split, config.seed, device, channels_last)
    use_amp = use_bf16(config.precision, device, is_convolutional(model))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params)
    n_train = len(splits.y_train)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    total_steps = steps_per_epoch * config.epochs

    history: list[EpochEvent] = []
    status, message = "finished", ""
    step, images_seen, start = 0, 0, time.perf_counter()
    train_time = 0.0  # excludes evaluation, for an honest images/s
    model.train()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        order = torch.randperm(n_train, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        worst = torch.zeros((), device=device)  # largest batch loss since the last check
        seen = 0
        window_start, window_images = time.perf_counter(), 0
        for batch_start in range(0, n_train, config.batch_size):
            idx = order[batch_start : batch_start + config.batch_size]
            xb, yb = splits.x_train[idx], splits.y_train[idx]
            if config.augment == "affine":
                xb = random_affine(xb, generator)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if config.schedule == "onecycle":
                    scheduler.step()
            else:
                loss.backward()
                scratch_sgd_step(params, config.lr, config.weight_decay)
            step += 1
            n = len(yb)
            seen += n
            images_seen += n
            window_images += n
            loss_sum += loss.detach() * n
            correct += (logits.detach().argmax(1) == yb).sum()
            worst = torch.maximum(worst, loss.detach())  # NaN propagates; no device sync per step

            if step % report_every == 0 or batch_start + config.batch_size >= n_train:
                loss_value, worst_value = float(loss.detach()), float(worst)
                worst.zero_()
                if not math.isfinite(worst_value) or worst_value > DIVERGED_LOSS:
                    status = "diverged"
                    message = (
                        f"The loss reached {worst_value:.3g} by step {step}: the updates overshoot. "
                        f"Lower the learning rate (it was {config.lr:g}), e.g. to {config.lr / 10:g}."
                    )
                    break
                now = time.perf_counter()
                rate = window_images / max(now - window_start, 1e-9)
                window_start, window_images = now, 0
                elapsed = now - start
                if on_step:
                    on_step(StepEvent(
                        step=step, epoch=epoch, loss=loss_value,
                        accuracy=float((logits.detach().argmax(1) == yb).float().mean()),
                        lr=current_lr(optimizer, config), images_per_s=rate, elapsed=elapsed,
                        progress=step / total_steps,
                        eta_s=elapsed / step * (total_steps - step),
                    ))
            if cancel is not None and cancel.is_set():
                status, message = "cancelled", f"Stopped by request at step {step} (epoch {epoch})."
                break
            if config.time_budget_s and time.perf_counter() - start > config.time_budget_s:
                status, message = "finished", f"Time budget of {config.time_budget_s:g} s reached at step {step}."
                break
        train_time += time.perf_counter() - epoch_start
        if status != "finished" or seen == 0:
            break
        val_loss, val_acc = (
            evaluate_loss_accuracy(model, splits.x_val, splits.y_val, use_amp) if len(splits.y_val) else (None, None)
        )
        test_loss, test_acc = evaluate_loss_accuracy(model, splits.x_test, splits.y_test, use_amp)
        event = EpochEvent(
            epoch=epoch, train_loss=float(loss_sum) / seen, train_accuracy=float(correct) / seen,
            val_loss=val_loss, val_accuracy=val_acc, test_loss=test_loss, test_accuracy=test_acc,
            elapsed=time.perf_counter() - start,
        )
        history.append(event)
        if on_epoch:
            on_epoch(event)
        if config.schedule == "step" and scheduler is not None:
            scheduler.step()
        elif config.schedule == "plateau" and scheduler is not None:
            scheduler.step(val_loss if val_loss is not None else event.train_loss)
        if message:  # time budget reached
            break

    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    last = history[-1] if history else None
    return TrainResult(
        status=status, message=message or "Training finished.", model=model, device=str(device),
        epochs_done=len(history), steps_done=step, elapsed=time.perf_counter() - start,
        images_per_s=images_seen / max(train_time, 1e-9), mixed_precision=use_amp,
        test_loss=last.test_loss if last else None, test_accuracy=last.test_accuracy if last else None,
        history=history,
    )


def current_lr(optimizer: torch.optim.Optimizer | None, config: TrainConfig) -> float:
    return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else config.lr
