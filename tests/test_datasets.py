"""The dataset seam: a second dataset is one spec. Here a tiny synthetic one (IDX files this test
writes, with their MD5s) is registered, then loaded, trained, evaluated and stored through the
same path a MNIST run takes, and MNIST's run ids stay what they were."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
import torch

from mnist_core.engine import data, datasets
from mnist_core.engine.config import RECIPES, TrainConfig
from mnist_core.engine.datasets import DatasetSpec
from mnist_core.engine.naming import run_name
from mnist_core.engine.train import train
from mnist_core.service.jobs import execute, submit
from mnist_core.service.lifecycle import run_id_for
from mnist_core.service.results import load_evaluation, load_run_model
from mnist_core.settings import ConfigError, Limits
from tests.synthetic import idx_images, idx_labels

CLASSES = ("ring", "bar", "cross")


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` noisy 28x28 pictures of three shapes, labelled 0..2 in turn."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:28, :28]
    ring = (np.abs(np.hypot(y - 13.5, x - 13.5) - 8) < 2) * 220
    bar = (np.abs(x - 13.5) < 3) * 220
    cross = ((np.abs(x - y) < 2) | (np.abs(x + y - 27) < 2)) * 220
    labels = np.arange(n) % 3
    images = np.stack([ring, bar, cross])[labels] + rng.integers(0, 60, (n, 28, 28))
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture()
def tiny_spec(tmp_path):
    """Four IDX files written here (two gzipped, as published sets often are) and their spec."""
    folder = tmp_path / "shapes"
    folder.mkdir()
    files = {"train_images": "shapes-train-images", "train_labels": "shapes-train-labels",
             "test_images": "shapes-test-images", "test_labels": "shapes-test-labels"}
    (train_x, train_y), (test_x, test_y) = shapes(300, 0), shapes(90, 1)
    md5 = {}
    for key, array in {"train_images": train_x, "train_labels": train_y, "test_images": test_x,
                       "test_labels": test_y}.items():
        raw = idx_labels(array) if array.ndim == 1 else idx_images(array)
        md5[files[key]] = hashlib.md5(raw).hexdigest()
        if key.startswith("train"):
            (folder / f"{files[key]}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / files[key]).write_bytes(raw)
    pixels = train_x.astype(np.float64) / 255
    spec = DatasetSpec(name="shapes", title="Shapes", files=files, md5=md5,
                       classes=CLASSES, mean=float(pixels.mean()), std=float(pixels.std()))
    datasets.register(spec)
    yield spec, folder
    datasets.DATASETS.pop(spec.name, None)


def test_a_registered_dataset_loads_verified_from_its_files(tiny_spec):
    spec, folder = tiny_spec
    loaded = data.load_dataset("shapes", folder)
    assert loaded.dataset == "shapes" and loaded.verified
    assert loaded.train_images.shape == (300, 28, 28) and loaded.test_labels.tolist()[:4] == [0, 1, 2, 0]
    normalised = data.normalise(loaded.train_images, "shapes")
    assert abs(float(normalised.mean())) < 1e-3 and abs(float(normalised.std()) - 1) < 1e-3  # its own statistics


def test_its_files_are_checked_as_mnist_s_are(tiny_spec):
    spec, folder = tiny_spec
    name = spec.files["test_labels"]
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[:-1] + bytes([(raw[-1] + 1) % 3]))  # still valid labels, other content
    with pytest.raises(data.DataRefused, match="MD5"):
        data.load_dataset("shapes", folder)
    (folder / name).write_bytes(raw[:8] + bytes([7]) + raw[9:])  # a label with no class
    with pytest.raises(data.DataRefused, match="not one of its 3 classes"):
        data.load_dataset("shapes", folder, verify=False)


def test_it_trains_evaluates_and_is_stored_through_the_run_path(tiny_spec, store):
    spec, folder = tiny_spec
    loaded = data.load_dataset("shapes", folder)
    config = TrainConfig(model="linear", dataset="shapes", epochs=2, batch_size=32, lr=1e-2, device="cpu")
    submission = submit(store, config, "ada", Limits())
    assert execute(store, submission.run_id, config, loaded) == "finished"
    record = store.get_run(submission.run_id)
    assert record.config["dataset"] == "shapes" and record.test_accuracy > 0.9
    assert "shapes" in run_name(record.config)
    evaluation = load_evaluation(store, record.id, loaded)
    assert evaluation.accuracy == pytest.approx(record.test_accuracy)
    model = load_run_model(store, record.id)
    probabilities = torch.softmax(model(data.normalise(loaded.test_images[:3], "shapes")), 1)
    assert probabilities.argmax(1).tolist() == [0, 1, 2]
    # The same settings on MNIST are another run; a run does not train on another dataset's data.
    assert run_id_for(config.replace(dataset="mnist")) != record.id
    as_mnist = data.Mnist(loaded.train_images, loaded.train_labels, loaded.test_images, loaded.test_labels,
                          source="the same arrays, labelled MNIST", folder=folder)
    with pytest.raises(ValueError, match="dataset"):
        train(config, as_mnist)


def test_an_unknown_dataset_is_refused_by_name():
    with pytest.raises(ConfigError, match="dataset"):
        TrainConfig(dataset="fashion")


def test_mnist_run_ids_are_unchanged_by_the_dataset_setting():
    """Ids of runs stored before configs named a dataset (computed with the code before it)."""
    assert run_id_for(TrainConfig()) == "cnn-small-eb316b9e170a"
    assert run_id_for(RECIPES["cnn-sprint"].config) == "cnn-sprint-f41a0feb2d8d"
    assert run_id_for(RECIPES["cnn-best"].config) == "cnn-best-30ecd06baf84"
    assert run_id_for(TrainConfig(model="linear", lr=0.003, seed=3)) == "linear-b3ef0d8e3a8a"
    assert TrainConfig.from_dict({"model": "linear"}).dataset == "mnist"  # a stored config without the key
