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
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_core.engine.config import TrainConfig
from mnist_core.speed.seam import BatchParts, for_training, inference_batch, new_optimizer, torch_threads
from mnist_core.engine.data import Mnist, normalise
from mnist_core.engine.device import resolve_device, use_bf16
from mnist_core.engine.models import Classifier, build_model, has_batch_norm, is_convolutional

# Evaluation batch at most: on a CPU, cpu_speed.inference_batch makes it smaller for a model
# whose largest activation would be over ~8 MB (cnn-best: 113), so it reuses freed memory
# instead of page-faulting. Evaluating cnn-small on the test set took 0.64-0.79 s in batches
# of 2,000 and 0.28-0.33 s in batches of 500; cnn-best 4.9-5.9 s in batches of 500 (520,000
# page faults) and 4.1-4.3 s in batches of 64.
EVAL_BATCH = 500
# Chance-level cross-entropy is ln 10 = 2.3. A batch loss above this means the weights have
# blown up (the true digit got a probability below e^-1000); no sane run gets there.
DIVERGED_LOSS = 1e3
REPORT_S = 0.5  # a report at least this often, so slow models still chart live


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
    total: int  # steps the whole run will take, when it is not stopped early
    eta_s: float

    @property
    def progress(self) -> float:
        """0..1 of the whole run."""
        return self.step / self.total if self.total else 0.0


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
    """Normalised train/validation/test data resident on one device.

    The training split is kept as the full normalised set plus the indices of its images, and
    each batch is gathered straight from the full set: no 190 MB copy of the training images per
    run. A warm worker passes data with a pre-normalised copy that all workers share (mapped
    once); otherwise the images are normalised here.
    """

    def __init__(self, data: Mnist, val_split: float, seed: int, device: torch.device, channels_last: bool):
        order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(seed))
        n_val = int(round(len(order) * val_split))
        train_idx, val_idx = order[n_val:], order[:n_val]
        if data.normalised is not None:
            train_all, test_all = data.normalised
        else:
            train_all, test_all = normalise(data.train_images, data.dataset), normalise(data.test_images, data.dataset)
        self.channels_last = channels_last
        self.x_all = train_all.to(device)  # no copy on the CPU
        self.train_index = train_idx.to(device)
        self.y_train = data.train_labels[train_idx].to(device)
        self.x_val, self.y_val = self.layout(self.x_all[val_idx.to(device)]), data.train_labels[val_idx].to(device)
        self.x_test, self.y_test = self.layout(test_all.to(device)), data.test_labels.to(device)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at `positions` (0..len(y_train)-1) of the training split.

        `index_select` copies whole rows; `x[idx]` goes through general indexing, 33 against 7 us
        for a batch of 64 images (a tenth of a `linear` step)."""
        rows = self.train_index.index_select(0, positions)
        return self.layout(self.x_all.index_select(0, rows)), self.y_train.index_select(0, positions)


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


# Devices with torch.optim's fused kernels (one pass over all weights), which make_optimizer asks for.
FUSED_DEVICES = ("cpu", "cuda")
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd")  # fused where the device has the kernels


def uses_optimizer_step(config: TrainConfig) -> bool:
    """Whether a run of `config` calls `optimizer.step()`, whose first call imports torch._dynamo
    (1.1-1.3 s): only Adam's, AdamW's and SGD's runs on a device without their fused kernels.
    Every other update is called directly (fused_step); 'scratch-sgd' has no optimizer. Decides
    whether `speed.start_optimizer_import` is worth starting."""
    if config.optimizer not in FUSED_OPTIMIZERS:
        return False
    device = resolve_device("auto").type if config.device == "auto" else config.device  # never raises
    return device not in FUSED_DEVICES


def make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
    """The chosen optimizer; None for 'scratch-sgd', whose update is written out in `scratch_sgd_step`.

    Adam, AdamW and SGD use their fused kernels (one pass over all weights instead of a dozen
    small ops per tensor): about 0.5 ms a step less for cnn-small on a 2-core CPU. The kernel is
    then called directly (fused_step.FusedAdamStep, FusedSGDStep), as is RMSprop's update
    (fused_step.RMSpropStep).
    """
    lr, wd = config.lr, config.weight_decay
    fused = {"fused": True} if params and params[0].device.type in FUSED_DEVICES else {}
    if config.optimizer == "adam":
        return new_optimizer(torch.optim.Adam, params, lr=lr, weight_decay=wd, **fused)
    if config.optimizer == "adamw":
        return new_optimizer(torch.optim.AdamW, params, lr=lr, weight_decay=wd, **fused)
    if config.optimizer == "sgd":
        return new_optimizer(torch.optim.SGD, params, lr=lr, momentum=config.momentum, weight_decay=wd,
                         nesterov=config.momentum > 0, **fused)
    if config.optimizer == "rmsprop":
        return new_optimizer(torch.optim.RMSprop, params, lr=lr, weight_decay=wd)
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
    batch = inference_batch(model, y.device, EVAL_BATCH)
    for start in range(0, len(y), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        with torch.autocast(device_type=y.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(xb)
        total_loss += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    return float(total_loss) / len(y), float(correct) / len(y)


@dataclass
class Session:
    """Everything one training run carries from step to step and epoch to epoch."""

    config: TrainConfig
    device: torch.device
    model: Classifier
    splits: Splits
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    generator: torch.Generator
    use_amp: bool
    bounds: list[int]  # where each batch of an epoch starts, then the split's size (batch_bounds)
    parts: BatchParts | None = None  # the batch's slices, one per core (cpu_speed.BatchParts)
    # the optimizer's update (speed.update_for: a direct call where one applies); None for scratch-sgd
    update: Callable[[], object] | None = None
    start: float = field(default_factory=time.perf_counter)
    step: int = 0
    images_seen: int = 0
    train_time: float = 0.0  # excludes evaluation, for an honest images/s
    status: str = "finished"
    message: str = ""  # set when the run stops before its last epoch

    @property
    def steps_per_epoch(self) -> int:
        return len(self.bounds) - 1

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


@dataclass
class EpochTotals:
    """Running sums over one epoch, kept on the device so no step waits for a sync."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    worst: torch.Tensor  # largest batch loss since the last report (NaN propagates)
    seen: int = 0


def batch_bounds(n_train: int, batch_size: int, fold_single: bool) -> list[int]:
    """Start of each batch of an epoch, then `n_train`. With `fold_single` a last batch of one
    image joins the batch before it: batch norm cannot train on one image (its variance is
    undefined, and torch refuses), so e.g. `cnn-sprint` at batch 11 on 54,000 images failed
    at the end of its first epoch."""
    bounds = [*range(0, n_train, batch_size), n_train] if n_train else [0]
    if fold_single and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return bounds


def start_session(config: TrainConfig, data: Mnist) -> Session:
    """Seed, build the model on its device, lay out the data, and make the optimizer."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.dropout)
    fast = for_training(model, device, is_convolutional(model), lambda params: make_optimizer(config, params))
    model, optimizer = fast.model, fast.optimizer
    splits = Splits(data, config.val_split, config.seed, device, fast.channels_last)
    bounds = batch_bounds(len(splits.y_train), config.batch_size, has_batch_norm(model))
    return Session(
        config=config, device=device, model=model, splits=splits, params=fast.params, optimizer=optimizer,
        scheduler=make_scheduler(config, optimizer, len(bounds) - 1),
        generator=torch.Generator().manual_seed(config.seed),
        use_amp=use_bf16(config.precision, device, is_convolutional(model)), bounds=bounds,
        parts=fast.parts, update=fast.update,
    )


def advance_schedule(session: Session, epoch_ended: bool, val_loss: float | None = None) -> None:
    """The one place the learning-rate schedule moves: one-cycle after every batch, the
    others after every epoch (plateau watches the validation loss, else the training loss)."""
    config, scheduler = session.config, session.scheduler
    if scheduler is None or epoch_ended != (config.schedule != "onecycle"):
        return
    if config.schedule == "plateau":
        scheduler.step(val_loss)
    else:
        scheduler.step()


def batch_loss(session: Session, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and logits of a batch (autocast is per thread, so it is entered here)."""
    with torch.autocast(device_type=session.device.type, dtype=torch.bfloat16, enabled=session.use_amp):
        logits = session.model(xb)
    return F.cross_entropy(logits.float(), yb), logits


def train_step(session: Session, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: forward, loss, backward, update. Returns the loss and the logits (detached)."""
    config = session.config
    if config.augment == "affine":
        xb = random_affine(xb, session.generator)
    if session.parts is not None:
        loss, logits = session.parts.gradients(lambda x, y: batch_loss(session, x, y), session.params, xb, yb)
    else:
        loss, logits = batch_loss(session, xb, yb)
        for p in session.params:  # what zero_grad(set_to_none=True) does, without its wrapper
            p.grad = None
        loss.backward()
    if session.update is not None:
        session.update()
    else:
        scratch_sgd_step(session.params, config.lr, config.weight_decay)
    advance_schedule(session, epoch_ended=False)
    session.step += 1
    return loss.detach(), logits.detach()


def train_epoch(
    session: Session,
    epoch: int,
    on_step: Callable[[StepEvent], None] | None,
    cancel: threading.Event | None,
    report_every: int,
) -> EpochTotals:
    """One pass over the training split in a fresh random order. Reports every `report_every`
    steps (and at least every REPORT_S seconds); stops early, setting the session's status and
    message, on divergence, a stop request or the time budget."""
    config, splits, device = session.config, session.splits, session.device
    n_train = len(splits.y_train)
    order = torch.randperm(n_train, generator=session.generator).to(device)
    zero = torch.zeros((), device=device)
    totals = EpochTotals(zero.clone(), zero.clone(), zero.clone())
    epoch_start = last_report = time.perf_counter()
    window_images = 0
    for batch_start, batch_end in zip(session.bounds, session.bounds[1:]):
        xb, yb = splits.train_batch(order[batch_start:batch_end])
        loss, logits = train_step(session, xb, yb)
        n = len(yb)
        totals.seen += n
        session.images_seen += n
        window_images += n
        totals.loss_sum += loss * n
        totals.correct += (logits.argmax(1) == yb).sum()
        totals.worst = torch.maximum(totals.worst, loss)

        now = time.perf_counter()
        last_batch = batch_end >= n_train
        if session.step % report_every == 0 or last_batch or now - last_report >= REPORT_S:
            worst = float(totals.worst)
            totals.worst.zero_()
            if not math.isfinite(worst) or worst > DIVERGED_LOSS:
                session.status = "diverged"
                session.message = (
                    f"The loss reached {worst:.3g} by step {session.step}: the updates overshoot. "
                    f"Lower the learning rate (it was {config.lr:g}), e.g. to {config.lr / 10:g}."
                )
                break
            if on_step:
                elapsed = now - session.start
                on_step(StepEvent(
                    step=session.step, epoch=epoch, loss=float(loss),
                    accuracy=float((logits.argmax(1) == yb).float().mean()),
                    lr=current_lr(session.optimizer, config), images_per_s=window_images / max(now - last_report, 1e-9),
                    elapsed=elapsed, total=session.total_steps,
                    eta_s=elapsed / session.step * (session.total_steps - session.step),
                ))
            last_report, window_images = now, 0
        if cancel is not None and cancel.is_set():
            session.status, session.message = "cancelled", f"Stopped by request at step {session.step} (epoch {epoch})."
            break
        if config.time_budget_s and now - session.start > config.time_budget_s:
            session.message = f"Time budget of {config.time_budget_s:g} s reached at step {session.step}."
            break
    session.train_time += time.perf_counter() - epoch_start
    return totals


def evaluate_epoch(session: Session, epoch: int, totals: EpochTotals) -> EpochEvent:
    """Train metrics of the epoch just run, plus validation and test metrics of the model now."""
    splits, amp = session.splits, session.use_amp
    val_loss, val_acc = (
        evaluate_loss_accuracy(session.model, splits.x_val, splits.y_val, amp) if len(splits.y_val) else (None, None)
    )
    test_loss, test_acc = evaluate_loss_accuracy(session.model, splits.x_test, splits.y_test, amp)
    return EpochEvent(
        epoch=epoch, train_loss=float(totals.loss_sum) / totals.seen,
        train_accuracy=float(totals.correct) / totals.seen, val_loss=val_loss, val_accuracy=val_acc,
        test_loss=test_loss, test_accuracy=test_acc, elapsed=time.perf_counter() - session.start,
    )


def train_epochs(
    session: Session,
    on_step: Callable[[StepEvent], None] | None,
    on_epoch: Callable[[EpochEvent], None] | None,
    cancel: threading.Event | None,
    report_every: int,
) -> list[EpochEvent]:
    """Epoch after epoch until the last, a stop or the time budget; the per-epoch events."""
    history: list[EpochEvent] = []
    session.model.train()
    for epoch in range(1, session.config.epochs + 1):
        with torch_threads(1) if session.parts is not None else nullcontext():
            totals = train_epoch(session, epoch, on_step, cancel, report_every)
        if session.status != "finished" or totals.seen == 0:
            break
        event = evaluate_epoch(session, epoch, totals)
        history.append(event)
        if on_epoch:
            on_epoch(event)
        advance_schedule(session, epoch_ended=True,
                         val_loss=event.val_loss if event.val_loss is not None else event.train_loss)
        if session.message:  # the time budget ran out
            break
    return history


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
    if data.dataset != config.dataset:
        raise ValueError(f"dataset: the run asks for {config.dataset!r} but was given {data.dataset!r}")
    session = start_session(config, data)
    try:
        history = train_epochs(session, on_step, on_epoch, cancel, report_every)
    finally:
        if session.parts is not None:
            session.parts.close()
    model = build_model(config.model, config.dropout)  # the registered layers, not the CPU rewrites
    model.load_state_dict(session.model.state_dict())
    model.eval()
    last = history[-1] if history else None
    return TrainResult(
        status=session.status, message=session.message or "Training finished.", model=model,
        device=str(session.device), epochs_done=len(history), steps_done=session.step,
        elapsed=time.perf_counter() - session.start, images_per_s=session.images_seen / max(session.train_time, 1e-9),
        mixed_precision=session.use_amp, test_loss=last.test_loss if last else None,
        test_accuracy=last.test_accuracy if last else None, history=history,
    )


def current_lr(optimizer: torch.optim.Optimizer | None, config: TrainConfig) -> float:
    return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else config.lr
