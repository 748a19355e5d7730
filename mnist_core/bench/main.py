"""Benchmark: this engine against the seed guide's reference pipeline, on the same machine.

    python -m mnist_core.bench            # everything (cnn-best takes several minutes on a CPU)
    python -m mnist_core.bench --best-seeds 3   # cnn-best for seeds 0, 1, 2 (its accuracy varies)
    python -m mnist_core.bench --quick    # one throughput pair and one run of the fastest recipe
    python -m mnist_core.bench --quick --device cuda   # the same on a GPU
    python -m mnist_core.bench --classroom  # the dashboard's run path through a server and browser
    python -m mnist_core.bench --pages      # every page's time until drawn, in a real browser

(a) reference: torchvision ToTensor + Normalize through a DataLoader, batch 64, Adam 1e-3, cnn-small,
    in a Python process of its own, as a learner runs the guide's script.
(b) engine: `mnist_core.engine.train` with the same model, batch size and optimizer.
Prints images/s of each and their ratio, the fastest recipe's time to 99.0% test accuracy per seed,
and cnn-best's accuracy and time for each seed asked for.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_core.speed import fused_layers
from mnist_core.engine.config import RECIPES, TrainConfig
from mnist_core.engine.data import MEAN, STD, Mnist, load_mnist
from mnist_core.speed.seam import start_optimizer_import
from mnist_core.engine.device import cpu_header, describe_device, resolve_device, use_bf16
from mnist_core.engine.models import build_model
from mnist_core.engine.train import train


def write_idx(folder: Path, data: Mnist) -> None:
    """Write the raw IDX files torchvision's MNIST dataset class expects under ROOT/MNIST/raw."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, images, labels in (("train", data.train_images, data.train_labels),
                                   ("t10k", data.test_images, data.test_labels)):
        n = len(labels)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, n) + labels.to(torch.uint8).numpy().tobytes())


def reference_epoch(data: Mnist, device: torch.device, batch_size: int = 64, max_batches: int | None = None) -> float:
    """Images/s of one epoch of the seed guide's pipeline (per-item PIL -> tensor transforms,
    each batch moved to the device as the guide does)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as root:
        write_idx(Path(root), data)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
        dataset = datasets.MNIST(root, train=True, download=False, transform=transform)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        torch.manual_seed(0)
        model = build_model("cnn-small").to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        seen, start = 0, time.perf_counter()
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            seen += len(y)
            if max_batches and i + 1 >= max_batches:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - start)


def reference_epoch_apart(device: torch.device) -> float:
    """`reference_epoch` in a fresh process, as the guide's script runs: with the C library's
    default allocator. (The engine's `keep_freed_memory` holds for the whole process that
    trains, so after the engine's first epoch a reference epoch here would run with it too.)"""
    code = ("import torch; from mnist_core.speed.seam import start_optimizer_import; start_optimizer_import().join(); "
            "from mnist_core.bench.main import reference_epoch; "
            "from mnist_core.engine.data import load_mnist; "
            f"print(reference_epoch(load_mnist(), torch.device({str(device)!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise RuntimeError(f"the reference epoch failed: {done.stderr.strip()[-500:]}")
    return float(done.stdout.split()[-1])


def engine_epoch(data: Mnist, device: torch.device, precision: str, batch_size: int = 64) -> tuple[float, bool]:
    """Images/s of one epoch of this engine, and whether it used bf16 mixed precision."""
    config = TrainConfig(model="cnn-small", epochs=1, batch_size=batch_size, lr=1e-3, optimizer="adam",
                         val_split=0.0, precision=precision, device=device.type)
    result = train(config, data)
    return result.images_per_s, result.mixed_precision


def time_to_accuracy(config: TrainConfig, data: Mnist, target: float) -> tuple[float | None, float]:
    """Seconds (training plus per-epoch evaluation) until test accuracy first reaches `target`."""
    reached: list[float] = []

    def on_epoch(event) -> None:
        if event.test_accuracy >= target and not reached:
            reached.append(event.elapsed)

    result = train(config, data, on_epoch=on_epoch)
    return (reached[0] if reached else None), result.test_accuracy or 0.0


def throughput(data: Mnist, device: torch.device, pairs: int) -> None:
    """The reference and the engine, interleaved so a machine whose speed drifts favours neither."""
    start_optimizer_import().join()  # torch.optim imports dynamo at its first step (1-2 s): before any timed epoch

    bf16 = use_bf16("auto", device, convolutional=True)
    print(f"cnn-small, batch 64, Adam 1e-3, one epoch each, {pairs} interleaved pairs:")
    ratios, ratios_auto, ours_all = [], [], []
    for pair in range(pairs):
        ref = reference_epoch_apart(device)
        ours, _ = engine_epoch(data, device, "fp32")
        ratios.append(ours / ref)
        ours_all.append(ours)
        line = (f"  pair {pair + 1}: (a) reference DataLoader pipeline {ref:7,.0f} images/s; "
                f"(b) engine, fp32 {ours:7,.0f} images/s = {ours / ref:.2f}x")
        if bf16:
            ours_auto, _ = engine_epoch(data, device, "auto")
            ratios_auto.append(ours_auto / ref)
            line += f"; (b') engine, bf16 mixed precision {ours_auto:7,.0f} images/s = {ours_auto / ref:.2f}x"
        print(line, flush=True)
    print(f"  median (b)/(a), fp32: {statistics.median(ratios):.2f}x")
    shared = reference_epoch(data, device)  # in this process, which the engine's epochs have tuned
    print(f"  (a) once more in this process, with the engine's allocator setting: {shared:,.0f} images/s; "
          f"median (b) is {statistics.median(ours_all) / shared:.2f}x that")
    if ratios_auto:
        print(f"  median (b')/(a), bf16: {statistics.median(ratios_auto):.2f}x")


def fastest_recipe(data: Mnist, device: torch.device, seeds: int) -> None:
    """Each seed's time to 99.0% test accuracy and final accuracy with the fastest recipe."""
    name = next(iter(RECIPES))
    recipe = RECIPES[name].config.replace(device=device.type)
    print(f"recipe {name}: {recipe.epochs} epoch(s), batch {recipe.batch_size}, {recipe.optimizer} "
          f"lr {recipe.lr:g} {recipe.schedule}, validation split {recipe.val_split:g}")
    times = []
    for seed in range(seeds):
        seconds, acc = time_to_accuracy(recipe.replace(seed=seed), data, 0.99)
        times.append(seconds)
        shown = f"{seconds:.1f} s" if seconds is not None else "not reached"
        print(f"  seed {seed}: 99.0% after {shown}; final test accuracy {acc:.4f}", flush=True)
    reached = [t for t in times if t is not None]
    if len(reached) == len(times):
        print(f"  time to 99.0% test accuracy: median {statistics.median(reached):.1f} s over {seeds} seed(s)")
    else:
        print(f"  reached 99.0% in {len(reached)} of {len(times)} runs")


def best_recipe(data: Mnist, device: torch.device, seeds: int) -> None:
    """cnn-best to the end, seed after seed: its test accuracy moves by up to about a tenth of a
    percent with the seed (which fixes the initial weights, batch order, dropout, augmentation)."""
    accuracies = []
    for seed in range(seeds):
        best = RECIPES["cnn-best"].config.replace(device=device.type, seed=seed)
        start = time.perf_counter()
        result = train(best, data, on_epoch=lambda e: print(
            f"  cnn-best epoch {e.epoch}: test accuracy {e.test_accuracy:.4f} ({e.elapsed:.0f} s)", flush=True))
        accuracies.append(result.test_accuracy)
        print(f"cnn-best seed {seed} final test accuracy: {result.test_accuracy:.4f} in "
              f"{time.perf_counter() - start:.0f} s ({best.epochs} epochs, augmentation {best.augment})", flush=True)
    if seeds > 1:
        print(f"cnn-best over {seeds} seeds: test accuracy {min(accuracies):.4f} to {max(accuracies):.4f}, "
              f"mean {statistics.mean(accuracies):.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_core.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip cnn-best; one pair and one seed")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the fastest recipe (median reported)")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved reference/engine epoch pairs")
    parser.add_argument("--skip-best", action="store_true", help="leave out cnn-best (minutes on a CPU)")
    parser.add_argument("--best-seeds", type=int, default=1, help="cnn-best runs, seeds 0, 1, ... (minutes each)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--classroom", action="store_true",
                        help="launch latency and throughput under polling, through a real server and browser")
    parser.add_argument("--pages", action="store_true",
                        help="every page's time until drawn in a real browser, and a confusion-matrix click")
    parser.add_argument("--sweep", action="store_true",
                        help="a 9-member sweep locally and through a local Ray head, and slider moves")
    args = parser.parse_args(argv)
    if args.sweep:
        from mnist_core.bench.sweep import main as sweep

        return sweep()
    if args.pages:
        from mnist_core.bench.pages import main as pages

        return pages()
    if args.classroom:
        from mnist_core.bench.classroom import main as classroom

        return classroom()
    try:
        device = resolve_device(args.device)
    except ValueError as err:  # e.g. --device cuda on a machine without a GPU
        parser.error(str(err))
    data = load_mnist()
    print(cpu_header())
    print(f"device: {describe_device(device)}; bf16 mixed precision with precision auto: "
          f"{'on' if use_bf16('auto', device, convolutional=True) else 'off'}; "
          f"compiled layers (fused_layers): {fused_layers.status()}")
    throughput(data, device, 1 if args.quick else args.pairs)
    fastest_recipe(data, device, 1 if args.quick else args.seeds)
    if not (args.quick or args.skip_best):
        best_recipe(data, device, args.best_seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
