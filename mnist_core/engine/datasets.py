"""What a dataset is, as data: its files and their checksums, image shape, classes, and the
pixel statistics its inputs are normalised with.

The data layer (data.py) reads, verifies and loads any dataset described here, and a
TrainConfig names one, so a second dataset of 28x28 grey images (Fashion-MNIST, say) is one more
spec, not edits across the engine. MNIST is the default everywhere, and configs that train on it
keep their run ids (config.TrainConfig.config_hash leaves the default dataset out).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of labelled grey images in IDX files (the format MNIST is published in)."""

    name: str  # the key a TrainConfig uses, e.g. "mnist"
    title: str  # how people name it, e.g. "MNIST"
    # The four files' stems by role (train_images, train_labels, test_images, test_labels).
    files: dict[str, str]
    # The MD5 of each file's decompressed bytes, by stem (the published values); empty: unchecked.
    md5: dict[str, str] = field(default_factory=dict)
    shape: tuple[int, int] = (28, 28)
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))
    mean: float = 0.5  # of the training pixels scaled to [0, 1] (data.pixel_stats recomputes it)
    std: float = 0.25
    mirrors: tuple[str, ...] = ()  # where a missing copy may be downloaded from, tried in order

    @property
    def stems(self) -> list[str]:
        return list(self.files.values())


MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    files={
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    },
    md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    mean=0.1307,
    std=0.3081,
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
)
DEFAULT = MNIST.name
DATASETS: dict[str, DatasetSpec] = {MNIST.name: MNIST}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Make `spec` known by its name (a second dataset is one call); returns it."""
    if set(spec.files) != {"train_images", "train_labels", "test_images", "test_labels"}:
        raise ValueError(f"{spec.name}: files must name train_images, train_labels, test_images and test_labels")
    DATASETS[spec.name] = spec
    return spec


def spec_for(name: str) -> DatasetSpec:
    """The spec named `name`; a KeyError names the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
