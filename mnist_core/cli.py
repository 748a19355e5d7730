"""Command line: the same data, engine and run store as the dashboard, without a browser.

    python -m mnist_core data
    python -m mnist_core train --model cnn-small --epochs 1
    python -m mnist_core runs
    python -m mnist_core baseline
    python -m mnist_core predict digit.png --run cnn-small-1a2b3c4d5e6f
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mnist_core.config import RANGES, ConfigError, Limits, TrainConfig
from mnist_core.data import DataError
from mnist_core.runs import RunStoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_core", description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", help="run store folder (default: MNIST_RUNS_DIR or ./runs)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("data", help="where MNIST came from, counts, class balance, mean/std")
    train_parser = sub.add_parser("train", help="train a model and store the run")
    add_config_arguments(train_parser)
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


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, typed and defaulted from the dataclass."""
    for field in dataclasses.fields(TrainConfig):
        if field.name == "extra":
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.name == "time_budget_s":
            parser.add_argument(flag, type=float, default=None, help="stop after this many seconds")
            continue
        kind = RANGES[field.name][2] if field.name in RANGES else str
        parser.add_argument(flag, type=kind, default=field.default, help=f"default {field.default}")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "extra"]
    return TrainConfig(**{name: getattr(args, name) for name in names})


def cmd_data(args: argparse.Namespace) -> int:
    from mnist_core.data import class_counts, load_mnist, pixel_stats

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

    from mnist_core.data import load_mnist
    from mnist_core.jobs import HOST, current, execute, run_id_for, submit
    from mnist_core.runs import REUSABLE, RunStore

    config = config_from_args(args)
    store = RunStore(args.runs_dir)
    known = current(store, run_id_for(config))
    # Data first (unless the run is cached): a claimed run must never wait on a missing file.
    data = None if known and known.status in REUSABLE else load_mnist(progress=download_progress)
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

    try:
        status = execute(store, run_id, config, data, on_step=on_step, on_epoch=on_epoch)
    except KeyboardInterrupt:
        store.transition(run_id, "cancelled", "Stopped from the keyboard.", only_from=["running"])
        raise
    finally:
        bar.close()
    print_run(store.get_run(run_id))
    return 0 if status == "finished" else 1


def print_run(record) -> None:
    acc = f"{record.test_accuracy:.4f}" if record.test_accuracy is not None else "-"
    print(f"status: {record.status}. {record.message}")
    print(f"test accuracy: {acc}, device: {record.device or '-'}, time: {record.duration_s or 0:.1f} s")


def cmd_runs(args: argparse.Namespace) -> int:
    from mnist_core.jobs import recover
    from mnist_core.runs import RunStore

    store = RunStore(args.runs_dir)
    recover(store)  # runs of processes that died show as interrupted, not running
    records = store.list_runs()
    if not records:
        print("no runs stored yet; train one with `python -m mnist_core train`")
        return 0
    print(f"{'run id':<26} {'status':<11} {'epochs':>6} {'test acc':>8} {'time s':>7}  device")
    for r in records:
        acc = f"{r.test_accuracy:.4f}" if r.test_accuracy is not None else "-"
        print(f"{r.id:<26} {r.status:<11} {r.epochs_done:>6} {acc:>8} {r.duration_s or 0:>7.1f}  {r.device}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    import time

    from mnist_core.baselines import nearest_mean_baseline, pair_similarity
    from mnist_core.data import load_mnist

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
    from mnist_core.predict import load_run_model, predict_image
    from mnist_core.preprocess import load_uploaded_image
    from mnist_core.runs import RunStore

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


COMMANDS = {"data": cmd_data, "train": cmd_train, "runs": cmd_runs, "baseline": cmd_baseline, "predict": cmd_predict}
