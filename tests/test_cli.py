"""The command line (mnist_core/cli.py) end to end, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT


def cli(*args: str, runs_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_core", "--runs-dir", str(runs_dir), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=os.environ.copy())


def test_train_runs_predict_and_baseline(mnist, tmp_path):
    runs = tmp_path / "runs"
    trained = cli("train", "--model", "linear", "--epochs", "1", "--batch-size", "256", "--profile", runs_dir=runs)
    assert trained.returncode == 0, trained.stderr
    assert "status: finished" in trained.stdout and "test accuracy: 0.9" in trained.stdout
    # --profile: one line per phase, then the whole process; the phases add up to it.
    profile = trained.stdout.split("where the time went:\n")[1].splitlines()
    seconds = [float(line.split()[0]) for line in profile]
    assert [line.split(" s  ")[1].split(":")[0] for line in profile[:2]] == ["start-up", "data load (decompress, MD5 check)"]
    assert "training" in profile[-3] and "whole process" in profile[-1]
    assert sum(seconds[:-1]) == pytest.approx(seconds[-1], abs=0.05)

    listing = cli("runs", runs_dir=runs)
    run_id = next(line.split()[0] for line in listing.stdout.splitlines() if line.startswith("linear-"))
    assert "finished" in listing.stdout

    # A test digit saved as a black-on-white picture, the way someone would photograph one.
    digit = 255 - mnist.test_images[0].numpy()
    picture = tmp_path / "digit.png"
    Image.fromarray(np.kron(digit, np.ones((8, 8), dtype=np.uint8))).save(picture)
    predicted = cli("predict", str(picture), "--run", run_id, runs_dir=runs)
    assert predicted.returncode == 0, predicted.stderr
    assert f"predicted digit: {int(mnist.test_labels[0])}" in predicted.stdout

    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 255).save(blank)
    assert "blank" in cli("predict", str(blank), "--run", run_id, runs_dir=runs).stdout

    baseline = cli("baseline", runs_dir=runs)
    assert "nearest mean image (L2): test accuracy 0.820" in baseline.stdout
    assert "3 vs 7" in baseline.stdout


def test_sweep_trains_each_member_once_and_refuses_bad_lists(mnist, tmp_path, monkeypatch, capsys):
    from mnist_core.cli import main
    from mnist_core.service.store import RunStore

    runs = tmp_path / "runs"
    swept = cli("sweep", "--model", "linear", "--lr", "1e-3,1e-2", "--batch-size", "256", "--name", "two rates",
                runs_dir=runs)
    assert swept.returncode == 0, swept.stderr
    assert "2 of 2 finished" in swept.stdout and "best: linear · lr 0.0" in swept.stdout, swept.stdout
    again = cli("sweep", "--model", "linear", "--lr", "1e-3,1e-2,3e-3", "--batch-size", "256", runs_dir=runs)
    assert "1 to train, 2 reused" in again.stdout and "3 of 3 finished" in again.stdout, again.stdout
    store = RunStore(runs)
    before = (len(store.list_runs()), len(store.list_sweeps()))
    for args, env, message in (
        (("--lr", " , "), {}, "lr: give at least one value"),
        (("--lr", "1e-3,fast"), {}, "'fast' is not a number"),
        (("--seed", "1,2,3"), {"MNIST_MAX_SWEEP": "2"}, "more than this deployment allows"),
        (("--epochs", "1,5"), {"MNIST_MAX_EPOCHS": "2"}, "exceeds this deployment's limit"),
    ):
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            code = main(["--runs-dir", str(runs), "sweep", "--model", "linear", *args])
        error = capsys.readouterr().err
        assert code == 2 and message in error, (args, error)
    assert (len(store.list_runs()), len(store.list_sweeps())) == before  # nothing queued half-way


def test_bench_refuses_a_device_this_machine_lacks_with_a_sentence():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the request is valid here")
    done = subprocess.run([sys.executable, "-m", "mnist_core.bench", "--device", "cuda"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU is available" in done.stderr and "Traceback" not in done.stderr
