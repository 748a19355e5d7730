"""MNIST data layer: a strict IDX reader, content verification and the data-source chain.

The seed notes parse the IDX files by hand; this module does the same with numpy, but checks
every header field and the decompressed MD5, so a truncated or foreign file is a clear error
instead of a silent partial load.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# File stems and the MD5 of each file's *decompressed* bytes (the published values).
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
EXPECTED_COUNT = {"train": 60000, "test": 10000}
LABEL_MAGIC = 0x00000801
IMAGE_MAGIC = 0x00000803
# The largest decompressed file we accept: the real training images are 47 MB.
MAX_FILE_BYTES = 64 * 1024 * 1024
# Torchvision's mirrors, tried in order when no local copy exists.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MEAN = 0.1307  # Of the training pixels scaled to [0, 1]; recomputed by `pixel_stats`.
STD = 0.3081


class DataError(Exception):
    """A data file is missing, malformed or not the canonical MNIST content."""


@dataclass(frozen=True)
class Mnist:
    """The four arrays of MNIST as tensors, plus where they came from."""

    train_images: torch.Tensor  # uint8, 60000x28x28
    train_labels: torch.Tensor  # int64, 60000
    test_images: torch.Tensor  # uint8, 10000x28x28
    test_labels: torch.Tensor  # int64, 10000
    source: str  # human-readable origin, e.g. "MNIST_DATA_DIR=/path"
    folder: Path
    # (train, test) already normalised, Nx1x28x28 float32, when a warm worker mapped a shared copy.
    normalised: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, compare=False, repr=False)


def parse_idx(raw: bytes, name: str = "IDX file") -> np.ndarray:
    """Parse the bytes of one IDX file (labels or images) into a uint8 array.

    Checks the magic number, the dimensions and that the byte count matches them exactly.
    """
    if len(raw) < 8:
        raise DataError(f"{name}: only {len(raw)} bytes, too short for an IDX header.")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic == LABEL_MAGIC:
        (count,) = struct.unpack(">I", raw[4:8])
        header, shape = 8, (count,)
    elif magic == IMAGE_MAGIC:
        if len(raw) < 16:
            raise DataError(f"{name}: {len(raw)} bytes, too short for an image IDX header.")
        count, rows, cols = struct.unpack(">III", raw[4:16])
        if (rows, cols) != (28, 28):
            raise DataError(f"{name}: images are {rows}x{cols}, MNIST images are 28x28.")
        header, shape = 16, (count, rows, cols)
    else:
        raise DataError(
            f"{name}: magic number 0x{magic:08x} is neither 0x{LABEL_MAGIC:08x} (labels) "
            f"nor 0x{IMAGE_MAGIC:08x} (images); this is not an MNIST IDX file."
        )
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: header promises {count} items ({expected} bytes) but the file has "
            f"{len(raw)} bytes: it {problem}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def decompress(raw: bytes, name: str) -> bytes:
    """Return the IDX bytes whether `raw` is gzip-compressed or not, with a size cap."""
    if raw[:2] != b"\x1f\x8b":
        if len(raw) > MAX_FILE_BYTES:
            raise DataError(f"{name}: {len(raw)} bytes is larger than any MNIST file.")
        return raw
    # A gzip file may hold several members (bgzip, `cat a.gz b.gz`), all of them content, and
    # zero padding after a member; anything else after the stream makes the file invalid.
    parts: list[bytes] = []
    size = 0
    rest = raw
    try:
        while rest:
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            part = decoder.decompress(rest, MAX_FILE_BYTES + 1 - size)
            size += len(part)
            if size > MAX_FILE_BYTES or decoder.unconsumed_tail:
                raise DataError(f"{name}: decompresses to more than {MAX_FILE_BYTES} bytes.")
            if not decoder.eof:
                raise DataError(f"{name}: the gzip stream is truncated.")
            parts.append(part)
            rest = decoder.unused_data.lstrip(b"\0")
        return b"".join(parts)
    except zlib.error as err:
        raise DataError(f"{name}: not a valid gzip file ({err}).") from err


def check_md5(raw: bytes, stem: str, name: str) -> None:
    """Compare the decompressed bytes with the published MD5 for `stem`."""
    digest = hashlib.md5(raw).hexdigest()
    if digest != MD5[stem]:
        raise DataError(
            f"{name}: MD5 of the decompressed content is {digest}, expected {MD5[stem]} "
            f"for {stem}. The file is corrupted or is not the canonical MNIST file."
        )


def read_file(path: Path, stem: str, verify: bool = True) -> np.ndarray:
    """Read, optionally verify, and parse one MNIST file from disk."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size} bytes is larger than any MNIST file.")
    raw = decompress(path.read_bytes(), str(path))
    if verify:
        check_md5(raw, stem, str(path))
    return parse_idx(raw, str(path))


def find_file(folder: Path, stem: str) -> Path | None:
    """Locate `stem` (raw or .gz) in a flat folder or torchvision's ROOT/MNIST/raw/ layout."""
    for base in (folder, folder / "MNIST" / "raw", folder / "raw"):
        for candidate in (base / stem, base / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def missing_files(folder: Path) -> list[str]:
    """The stems of the four files that `folder` lacks."""
    return [stem for stem in FILES.values() if find_file(folder, stem) is None]


def default_cache_dir() -> Path:
    """The project's own data cache: MNIST_CACHE_DIR, else ./data."""
    return Path(os.environ.get("MNIST_CACHE_DIR", "data")).resolve()


def load_folder(folder: Path, source: str, verify: bool = True) -> Mnist:
    """Load all four files from `folder`, checking counts and that labels are digits."""
    missing = missing_files(folder)
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (raw or .gz).")
    arrays = {
        key: read_file(find_file(folder, stem), stem, verify)  # type: ignore[arg-type]
        for key, stem in FILES.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{folder}: the {split} image and label files are swapped.")
        if len(images) != len(labels):
            raise DataError(
                f"{folder}: {len(images)} {split} images but {len(labels)} {split} labels."
            )
        if labels.size and labels.max() > 9:
            raise DataError(f"{folder}: {split} labels contain {labels.max()}, not a digit.")
    return Mnist(
        train_images=torch.from_numpy(arrays["train_images"].copy()),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"].copy()),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        source=source,
        folder=folder,
    )


def download(
    cache_dir: Path,
    timeout: float = 5.0,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Fetch the four files from torchvision's mirrors into `cache_dir`, verified.

    Each file is checked by its decompressed MD5 before it is moved into place, so an
    interrupted or corrupted download never leaves a file that looks valid.
    """
    errors: list[str] = []
    fetched: dict[str, bytes] = {}
    for stem in FILES.values():
        for mirror in MIRRORS:
            url = f"{mirror}{stem}.gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0)
                    chunks, done = [], 0
                    while chunk := response.read(1 << 16):
                        chunks.append(chunk)
                        done += len(chunk)
                        if progress:
                            progress(stem, done, total)
                raw = b"".join(chunks)
                check_md5(decompress(raw, url), stem, url)
                fetched[stem] = raw
                break
            except (urllib.error.URLError, OSError, DataError, ValueError) as err:
                errors.append(f"{url}: {err}")
        else:
            raise DataError("Download failed:\n  " + "\n  ".join(errors))
    install_files(fetched, cache_dir)


def install_files(files: Mapping[str, bytes], cache_dir: Path) -> list[str]:
    """Validate uploaded or downloaded files and store them under fixed names in the cache.

    `files` maps any name to the file's bytes (raw or gzip); each is identified by its
    content, not its name, so a user-chosen file name never becomes a path. Either every
    file validates and is written, or nothing is written. Returns the stored stems.
    """
    by_stem: dict[str, bytes] = {}
    digests = {md5: stem for stem, md5 in MD5.items()}
    for name, raw in files.items():
        plain = decompress(raw, name)
        stem = digests.get(hashlib.md5(plain).hexdigest())
        if stem is None:
            parse_idx(plain, name)  # a structural error is the more useful message
            raise DataError(f"{name}: a valid IDX file, but not one of the four MNIST files.")
        by_stem[stem] = plain
    cache_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for stem, plain in by_stem.items():
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".upload-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(plain)
            staged.append((Path(tmp), cache_dir / stem))
        for tmp, final in staged:
            os.replace(tmp, final)
            stale_gz = final.with_name(final.name + ".gz")
            if stale_gz.exists():
                stale_gz.unlink()
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    load_cached.cache_clear()
    return sorted(by_stem)


@functools.lru_cache(maxsize=4)
def load_cached(folder: str, source: str) -> Mnist:
    """Load a folder once per process: the dashboard's sessions all share this copy."""
    return load_folder(Path(folder), source)


def load_mnist(
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_download: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> Mnist:
    """Find MNIST: `data_dir` or MNIST_DATA_DIR, then the ./data cache, then a download.

    Raises DataError saying what was tried and how to fix it when all three fail.
    """
    tried: list[str] = []
    explicit = data_dir or os.environ.get("MNIST_DATA_DIR")
    if explicit:
        folder = Path(explicit).expanduser().resolve()
        label = "argument" if data_dir else "MNIST_DATA_DIR"
        if not missing_files(folder):
            return load_cached(str(folder), f"{label}={folder}")
        tried.append(f"{label}={folder}: missing {', '.join(missing_files(folder))}")
    cache = Path(cache_dir).resolve() if cache_dir else default_cache_dir()
    if not missing_files(cache):
        return load_cached(str(cache), f"data cache {cache}")
    tried.append(f"data cache {cache}: missing {', '.join(missing_files(cache))}")
    if allow_download and os.environ.get("MNIST_NO_DOWNLOAD") != "1":
        try:
            download(cache, progress=progress)
            return load_cached(str(cache), f"downloaded into {cache}")
        except DataError as err:
            tried.append(str(err))
    raise DataError(
        "MNIST data not found. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nFix: set MNIST_DATA_DIR to a folder holding the four IDX files (raw or .gz), "
        f"or copy them into {cache}, or upload them on the dashboard's data page."
    )


def pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of pixel values scaled to [0, 1] (float64, exact enough)."""
    x = images.to(torch.float64).div_(255.0)
    return float(x.mean()), float(x.std(correction=0))


def class_counts(labels: torch.Tensor) -> list[int]:
    """How many examples of each digit 0..9."""
    return torch.bincount(labels, minlength=10).tolist()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 Nx28x28 -> float32 Nx1x28x28 with the training set's mean 0 and std 1.

    Networks train faster on centred inputs of unit scale: gradients of all pixels are then of
    similar size, so one learning rate suits every weight.
    """
    return images.unsqueeze(1).to(torch.float32).div_(255.0).sub_(MEAN).div_(STD)
