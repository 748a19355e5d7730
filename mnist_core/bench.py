"""Benchmark: this engine against the seed guide's reference pipeline, on the same machine.

    python -m mnist_core.bench            # everything (cnn-best takes several minutes on a CPU)
    python -m mnist_core.bench --quick    # throughput and one cnn-fast run only
    python -m mnist_core.bench --classroom  # the dashboard's run path through a server and browser

(a) reference: torchvision ToTensor + Normalize through a DataLoader, batch 64, Adam 1e-3, cnn-small.
(b) engine: `mnist_core.train` with the same model, batch size and optimizer.
Prints images/s of each, their ratio, cnn-fast's time to 99.0% test accuracy and cnn-best's accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_core.config import RECIPES, TrainConfig
from mnist_core.data import MEAN, STD, Mnist, load_mnist
from mnist_core.device import cpu_header, describe_device
from mnist_core.models import build_model
from mnist_core.train import train


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


def reference_epoch(data: Mnist, batch_size: int = 64, max_batches: int | None = None) -> float:
    """Images/s of one epoch of the seed guide's pipeline (per-item PIL -> tensor transforms)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as root:
        write_idx(Path(root), data)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
        dataset = datasets.MNIST(root, train=True, download=False, transform=transform)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        torch.manual_seed(0)
        model = build_model("cnn-small")
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        seen, start = 0, time.perf_counter()
        for i, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            seen += len(y)
            if max_batches and i + 1 >= max_batches:
                break
        return seen / (time.perf_counter() - start)


def engine_epoch(data: Mnist, batch_size: int = 64, precision: str = "auto") -> tuple[float, bool]:
    """Images/s of one epoch of this engine, and whether it used bf16 mixed precision."""
    config = TrainConfig(model="cnn-small", epochs=1, batch_size=batch_size, lr=1e-3, optimizer="adam",
                         val_split=0.0, precision=precision)
    result = train(config, data)
    return result.images_per_s, result.mixed_precision


def time_to_accuracy(config: TrainConfig, data: Mnist, target: float) -> tuple[float | None, float]:
    """Seconds (training plus per-epoch test evaluation) until test accuracy first reaches `target`."""
    reached: list[float] = []

    def on_epoch(event) -> None:
        if event.test_accuracy >= target and not reached:
            reached.append(event.elapsed)

    result = train(config, data, on_epoch=on_epoch)
    return (reached[0] if reached else None), result.test_accuracy or 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_core.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip cnn-best and use one cnn-fast seed")
    parser.add_argument("--seeds", type=int, default=3, help="cnn-fast seeds (median reported)")
    parser.add_argument("--classroom", action="store_true",
                        help="launch latency and throughput under polling, through a real server and browser")
    parser.add_argument("--sweep", action="store_true",
                        help="a 9-member sweep locally and through a local Ray head, and slider moves")
    args = parser.parse_args(argv)
    if args.sweep:
        from mnist_core.bench_sweep import main as sweep

        return sweep()
    if args.classroom:
        from mnist_core.bench_classroom import main as classroom

        return classroom()
    data = load_mnist()
    print(cpu_header())
    print(f"device: {describe_device(torch.device('cpu'))}")

    # Interleaved, so a machine that slows down as it warms up does not favour either side.
    ref_first = reference_epoch(data)
    ours, bf16 = engine_epoch(data, precision="auto")
    ours_fp32, _ = engine_epoch(data, precision="fp32")
    ref = (ref_first + reference_epoch(data)) / 2
    print("cnn-small, batch 64, Adam 1e-3, one epoch (reference: mean of two epochs):")
    print(f"  (a) reference DataLoader pipeline:   {ref:8,.0f} images/s")
    print(f"  (b) mnist_core engine, precision auto ({'bf16' if bf16 else 'fp32'}): {ours:8,.0f} images/s"
          f"  ratio (b)/(a): {ours / ref:.2f}x")
    print(f"  (b') mnist_core engine, fp32:        {ours_fp32:8,.0f} images/s  ratio (b')/(a): {ours_fp32 / ref:.2f}x")

    fast = RECIPES["cnn-fast"]
    times, accs = [], []
    for seed in range(1 if args.quick else args.seeds):
        seconds, acc = time_to_accuracy(fast.replace(seed=seed), data, 0.99)
        times.append(seconds)
        accs.append(acc)
        shown = f"{seconds:.1f} s" if seconds is not None else "not reached"
        print(f"  cnn-fast seed {seed}: 99.0% after {shown}; final test accuracy {acc:.4f}")
    reached = [t for t in times if t is not None]
    if len(reached) == len(times):
        print(f"cnn-fast time to 99.0% test accuracy: median {statistics.median(reached):.1f} s "
              f"({fast.epochs} epochs, batch {fast.batch_size}, {fast.optimizer} {fast.schedule})")
    else:
        print(f"cnn-fast reached 99.0% in {len(reached)} of {len(times)} runs")

    if not args.quick:
        best = RECIPES["cnn-best"]
        start = time.perf_counter()
        result = train(best, data, on_epoch=lambda e: print(
            f"  cnn-best epoch {e.epoch}: test accuracy {e.test_accuracy:.4f} ({e.elapsed:.0f} s)", flush=True))
        print(f"cnn-best final test accuracy: {result.test_accuracy:.4f} in {time.perf_counter() - start:.0f} s "
              f"({best.epochs} epochs, augmentation {best.augment})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
