"""Command line: the same data, engine and run store as the dashboard, without a browser.

    python -m mnist_core data
    python -m mnist_core train --model cnn-small --epochs 1
    python -m mnist_core sweep --model linear --lr 1e-3,3e-3,1e-2 --batch-size 64,256
    python -m mnist_core runs
    python -m mnist_core baseline
    python -m mnist_core predict digit.png --run cnn-small-1a2b3c4d5e6f

Each command imports inside its function what only it needs (the run path, the cluster, the
baselines), so a command starts without the others' imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_core.engine.config import RANGES, TrainConfig
from mnist_core.settings import ConfigError, Limits
from mnist_core.engine.data import DataError
from mnist_core.service.store import RunStore, RunStoreError

if TYPE_CHECKING:  # imported when a sweep runs, not at every command's start
    from mnist_core.service.sweeps import SweepPlan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_core", description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", help="run store folder (default: MNIST_RUNS_DIR or ./runs)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("data", help="where MNIST came from, counts, class balance, mean/std")
    train_parser = sub.add_parser("train", help="train a model and store the run")
    add_config_arguments(train_parser)
    train_parser.add_argument("--profile", action="store_true",
                              help="print where the process's time went: start-up, data, training, evaluation")
    sweep_parser = sub.add_parser(
        "sweep", help="train every combination of several values per setting (comma-separated)")
    add_config_arguments(sweep_parser, sweepable=True)
    sweep_parser.add_argument("--random", type=int, metavar="N", help="N random members of the grid instead of all")
    sweep_parser.add_argument("--name", default="", help="the sweep's name (default: what it varies)")
    sweep_parser.add_argument("--early-stop", action="store_true",
                              help="stop hopeless members after epochs 1, 2, 4, ... (successive halving)")
    sub.add_parser("runs", help="list stored runs")
    sub.add_parser("baseline", help="nearest-mean-image baselines on the test set")
    predict = sub.add_parser("predict", help="predict the digit in an image file")
    predict.add_argument("image", type=Path)
    predict.add_argument("--run", required=True, help="run id (see `runs`)")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"error: invalid setting {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError, LookupError, DataError, RunStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def add_config_arguments(parser: argparse.ArgumentParser, sweepable: bool = False) -> None:
    """One flag per TrainConfig field, typed and defaulted from the dataclass; with `sweepable`,
    the settings a sweep may vary take a comma-separated list of values."""
    from mnist_core.service.sweeps import SWEEPABLE

    for field in dataclasses.fields(TrainConfig):
        if field.name == "extra":
            continue
        flag = "--" + field.name.replace("_", "-")
        if sweepable and field.name in SWEEPABLE:
            parser.add_argument(flag, default=str(field.default), help=f"one value or several, comma-separated "
                                                                       f"(default {field.default})")
            continue
        if field.name == "time_budget_s":
            parser.add_argument(flag, type=float, default=None, help="stop after this many seconds")
            continue
        kind = RANGES[field.name][2] if field.name in RANGES else str
        parser.add_argument(flag, type=kind, default=field.default, help=f"default {field.default}")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "extra"]
    return TrainConfig(**{name: getattr(args, name) for name in names})


def cmd_data(args: argparse.Namespace) -> int:
    from mnist_core.engine.data import class_counts, load_mnist, pixel_stats

    data = load_mnist(progress=download_progress)
    mean, std = pixel_stats(data.train_images)
    print(f"source: {data.source}")
    print(f"train: {len(data.train_labels)} images, test: {len(data.test_labels)} images, 28x28 uint8")
    print(f"first five training labels: {' '.join(map(str, data.train_labels[:5].tolist()))}")
    for split, labels in (("train", data.train_labels), ("test", data.test_labels)):
        counts = class_counts(labels)
        print(f"{split} class counts: " + "  ".join(f"{d}:{n}" for d, n in enumerate(counts)))
    print(f"train pixel mean {mean:.4f}, std {std:.4f} (pixels scaled to [0, 1])")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import getpass
    import os

    from tqdm import tqdm

    from mnist_core.speed import fused_layers
    from mnist_core.engine.data import load_mnist
    from mnist_core.service.lifecycle import HOST, current, run_id_for
    from mnist_core.service.jobs import execute, submit
    from mnist_core.service.store import REUSABLE
    from mnist_core.engine.train import uses_optimizer_step
    from mnist_core.speed.seam import start_optimizer_import

    phases = Phases(args.profile)
    config = config_from_args(args)
    # meanwhile, the data loads (gzip and MD5 free the GIL)
    optimizer_support = start_optimizer_import() if uses_optimizer_step(config) else None
    store = RunStore(args.runs_dir)
    known = current(store, run_id_for(config))
    # Data first (unless the run is cached): a claimed run must never wait on a missing file.
    data = None if known and known.status in REUSABLE else load_mnist(progress=download_progress)
    phases.mark("data load (decompress, MD5 check)")
    submission = submit(store, config, f"{getpass.getuser()} (command line)", Limits.from_env(), worker=(os.getpid(), HOST))
    run_id = submission.run_id
    record = store.get_run(run_id)
    if submission.outcome == "cached":
        print(f"cached: identical configuration already trained as run {run_id} ({record.status})")
        print_run(record)
        return 0
    if submission.outcome == "joined" or data is None:
        print(f"run {run_id} is being trained by another process; see `python -m mnist_core runs`")
        return 1
    print(f"run {run_id}: {config.model}, {config.epochs} epoch(s), batch {config.batch_size}, {config.optimizer} lr {config.lr:g}")
    bar = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def on_step(event) -> None:
        bar.n = int(event.progress * 1000)
        bar.set_postfix_str(f"epoch {event.epoch} loss {event.loss:.3f} {event.images_per_s:,.0f} img/s")

    def on_epoch(event) -> None:
        val = f" val acc {event.val_accuracy:.4f}" if event.val_accuracy is not None else ""
        bar.write(f"epoch {event.epoch}: train loss {event.train_loss:.4f} acc {event.train_accuracy:.4f}{val} "
                  f"test acc {event.test_accuracy:.4f} ({event.elapsed:.1f} s)")

    phases.mark(f"compiled layers, {fused_layers.status()} (its build begun in the background at start)")
    if optimizer_support is not None:
        optimizer_support.join()
        phases.mark("rest of torch.optim's import of torch._dynamo (begun in the background at start)")
    try:
        status = execute(store, run_id, config, data, on_step=on_step, on_epoch=on_epoch)
    except KeyboardInterrupt:
        store.transition(run_id, "cancelled", "Stopped from the keyboard.", only_from=["running"])
        raise
    finally:
        bar.close()
    record = store.get_run(run_id)
    phases.mark("training", record.duration_s or 0.0)
    phases.mark("final evaluation and storing the run")
    print_run(record)
    phases.report(training=record.duration_s or 0.0)
    return 0 if status == "finished" else 1


class Phases:
    """`train --profile`: seconds per phase of the whole process, from the interpreter's start
    (mnist_core.__main__.STARTED) when run as `python -m mnist_core`."""

    def __init__(self, enabled: bool):
        import time

        main_module = sys.modules.get("__main__")
        self.enabled, self.clock = enabled, time.perf_counter
        self.last = getattr(main_module, "STARTED", None) or self.clock()
        self.first = self.last
        self.rows: list[tuple[str, float]] = []
        self.mark("start-up: Python, torch and mnist_core imports")

    def mark(self, phase: str, seconds: float | None = None) -> None:
        """End `phase` now (or, with `seconds`, count that much of the time since the last mark)."""
        now = self.clock()
        spent = now - self.last if seconds is None else min(seconds, now - self.last)
        self.rows.append((phase, spent))
        self.last = self.last + spent

    def report(self, training: float) -> None:
        if not self.enabled:
            return
        total = self.clock() - self.first
        print("where the time went:")
        for phase, seconds in self.rows:
            print(f"  {seconds:6.2f} s  {phase}")
        print(f"  {total:6.2f} s  whole process; {total - training:.2f} s of it not training")


def cmd_sweep(args: argparse.Namespace) -> int:
    import getpass
    import time

    from mnist_core.service.access import Person
    from mnist_core.service.cluster import start_pool
    from mnist_core.service.store import ACTIVE
    from mnist_core.service.sweeps import launch

    store = RunStore(args.runs_dir)
    limits = Limits.from_env()
    launched = launch(store, sweep_plan(args), Person(f"{getpass.getuser()} (command line)"), limits, args.name,
                      args.early_stop)
    sweep = store.get_sweep(launched.sweep_id)
    print(f"sweep {sweep.id} \"{sweep.name}\": {len(store.sweep_members(sweep.id))} members, "
          f"{launched.queued} to train, {len(launched.outcomes) - launched.queued} reused or already training")
    start = time.perf_counter()
    pool, problem = (start_pool(store.root, limits.max_concurrent, None, None) if cluster_named() else (None, None))
    if problem:
        print(f"note: {problem}", file=sys.stderr)
    try:
        if pool is None and launched.queued:
            train_members_here(store, sweep.id)
        while any(store.get_run(m.run_id).status in ACTIVE for m in store.sweep_members(sweep.id)):
            time.sleep(0.5)  # members trained by workers: the cluster's or a dashboard's
    finally:
        if pool is not None:
            pool.shutdown()
    return print_sweep(store, sweep.id, time.perf_counter() - start)


def sweep_plan(args: argparse.Namespace) -> SweepPlan:
    """The sweep the arguments ask for: a setting given several comma-separated values is an axis."""
    from mnist_core.service.sweeps import SWEEPABLE, SweepPlan, parse_values

    axes, base = {}, {}
    for name in [f.name for f in dataclasses.fields(TrainConfig) if f.name != "extra"]:
        value = getattr(args, name)
        values = parse_values(name, value) if name in SWEEPABLE else [value]
        if len(values) > 1:
            axes[name] = values
        else:
            base[name] = values[0]
    return SweepPlan(TrainConfig(**base), axes, mode="random" if args.random else "grid", samples=args.random or 0)


def train_members_here(store: RunStore, sweep_id: str) -> None:
    """Without a cluster, this process trains the sweep's queued members one after another."""
    from mnist_core.engine.data import load_mnist
    from mnist_core.service.jobs import execute

    data = load_mnist(progress=download_progress)
    for member in store.sweep_members(sweep_id):
        record = store.get_run(member.run_id)
        if record is not None and record.status == "queued":
            status = execute(store, member.run_id, TrainConfig.from_dict(record.config), data)
            done = store.get_run(member.run_id)
            print(f"  {member.run_id}: {status}, test accuracy {accuracy_text(done.test_accuracy)} "
                  f"({done.duration_s or 0:.1f} s)")


def print_sweep(store: RunStore, sweep_id: str, seconds: float) -> int:
    """Every member's accuracy and status, then the best; exit code 0 when all finished."""
    from mnist_core.service.sweeps import member_names, state

    now = state(store, sweep_id)
    names = member_names(now)
    print(f"{now.finished} of {now.total} finished in {seconds:.1f} s")
    for member in now.members:
        record = now.runs.get(member.run_id)
        accuracy = accuracy_text(record.test_accuracy if record else None)
        print(f"  {accuracy:>8}  {now.status(member):<13} {names[member.run_id]}  ({member.run_id})")
    best = now.best()
    if best:
        print(f"best: {names[best.run_id]} ({now.runs[best.run_id].test_accuracy:.4f})")
    return 0 if now.finished == now.total else 1


def accuracy_text(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def cluster_named() -> bool:
    from mnist_core.service.cluster import ray_address

    return ray_address() is not None


def print_run(record) -> None:
    print(f"status: {record.status}. {record.message}")
    print(f"test accuracy: {accuracy_text(record.test_accuracy)}, device: {record.device or '-'}, time: {record.duration_s or 0:.1f} s")


def cmd_runs(args: argparse.Namespace) -> int:
    from mnist_core.service.lifecycle import recover

    store = RunStore(args.runs_dir)
    recover(store)  # runs of processes that died show as interrupted, not running
    records = store.list_runs()
    if not records:
        print("no runs stored yet; train one with `python -m mnist_core train`")
        return 0
    print(f"{'run id':<26} {'status':<11} {'epochs':>6} {'test acc':>8} {'time s':>7}  device")
    for r in records:
        print(f"{r.id:<26} {r.status:<11} {r.epochs_done:>6} {accuracy_text(r.test_accuracy):>8} {r.duration_s or 0:>7.1f}  {r.device}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    import time

    from mnist_core.engine.baselines import nearest_mean_baseline, pair_similarity
    from mnist_core.engine.data import load_mnist

    data = load_mnist(progress=download_progress)
    start = time.perf_counter()
    for metric in ("l1", "l2"):
        result = nearest_mean_baseline(data.train_images, data.train_labels, data.test_images, data.test_labels, metric)
        print(f"nearest mean image ({metric.upper()}): test accuracy {result.accuracy:.4f}")
    pair = pair_similarity(data.train_images, data.train_labels, data.test_images, data.test_labels, 3, 7)
    print(f"3 vs 7 by pixel similarity to the mean images: accuracy {pair:.4f}")
    print(f"({time.perf_counter() - start:.2f} s)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mnist_core.service.results import load_run_model
    from mnist_core.engine.predict import predict_image
    from mnist_core.engine.preprocess import load_uploaded_image

    model = load_run_model(RunStore(args.runs_dir), args.run)
    gray = load_uploaded_image(args.image.read_bytes())
    prediction = predict_image(model, gray)
    if prediction is None:
        print("the image is blank: no ink found")
        return 1
    print(f"predicted digit: {prediction.digit} ({prediction.probabilities[prediction.digit]:.1%})")
    for digit, p in enumerate(prediction.probabilities):
        print(f"  {digit}: {p:6.1%} {'#' * int(p * 40)}")
    return 0


def download_progress(stem: str, done: int, total: int) -> None:
    if total:
        print(f"\rdownloading {stem}: {done / total:.0%}", end="" if done < total else "\n", file=sys.stderr)


COMMANDS = {"data": cmd_data, "train": cmd_train, "sweep": cmd_sweep, "runs": cmd_runs, "baseline": cmd_baseline, "predict": cmd_predict}
