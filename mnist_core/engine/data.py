"""MNIST data layer: a strict IDX reader, content verification and the data-source chain.

The seed notes parse the IDX files by hand; this module does the same with numpy, but checks
every header field and the decompressed MD5, so a truncated or foreign file is a clear error
instead of a silent partial load.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from mnist_core import settings
from mnist_core.engine.datasets import DEFAULT, MNIST, DatasetSpec, spec_for
from mnist_core.settings import Limits

# MNIST's files, checksums and statistics live in its spec (datasets.py); these names stay for
# the pages and tools that speak of MNIST.
FILES: dict[str, str] = MNIST.files
MD5: dict[str, str] = MNIST.md5
LABEL_MAGIC = 0x00000801
IMAGE_MAGIC = 0x00000803
# The largest decompressed file we accept: the real training images are 47 MB.
MAX_FILE_BYTES = 64 * 1024 * 1024
# One upload: at most the four files, each no larger than the raw training images (47,040,016
# bytes) plus slack, all together no larger than the raw set (54,950,048 bytes) plus slack. The
# per-file cap matches `server.maxUploadSize` (MiB) in .streamlit/config.toml.
MAX_UPLOAD_FILES = len(FILES)
MAX_UPLOAD_FILE_BYTES = 48 * 1024 * 1024
MAX_UPLOAD_BYTES = 56 * 1024 * 1024
MIRRORS = MNIST.mirrors  # torchvision's, tried in order when no local copy exists
MEAN, STD = MNIST.mean, MNIST.std  # of the training pixels scaled to [0, 1]; see `pixel_stats`

log = logging.getLogger(__name__)


class DataError(Exception):
    """A data file is missing, malformed or not the canonical MNIST content.

    `str(error)` is the whole reason, for the operator and the CLI: it may name server paths.
    `public` is the short text a visitor of the dashboard may see: never a path.
    """

    public = "The MNIST files could not be used or stored; the operator's log says why."

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        if public is not None:
            self.public = public


class DataMissing(DataError):
    """No folder holds the four files (and no download was allowed, or it failed)."""

    public = "MNIST was not found on this server."


class DataRefused(DataError):
    """The four files were found but failed a check: wrong magic, truncated, bad MD5, too large."""

    public = "MNIST files on this server could not be used; the operator's log says why."


class UploadRefused(DataError):
    """An upload was refused. The message names only the visitor's own file names, so it is
    also the public text."""

    def __init__(self, message: str):
        super().__init__(message, public=message)


@dataclass(frozen=True)
class Mnist:
    """The four arrays of MNIST as tensors, plus where they came from."""

    train_images: torch.Tensor  # uint8, 60000x28x28
    train_labels: torch.Tensor  # int64, 60000
    test_images: torch.Tensor  # uint8, 10000x28x28
    test_labels: torch.Tensor  # int64, 10000
    source: str  # the operator's description of the origin, e.g. "MNIST_DATA_DIR=/path"
    folder: Path
    origin: str = ""  # where it came from in words a visitor may see, e.g. "from the data cache"
    verified: bool = False  # every file's decompressed MD5 matched the published value
    # (train, test) already normalised, Nx1x28x28 float32, when a warm worker mapped a shared copy.
    normalised: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, compare=False, repr=False)
    dataset: str = DEFAULT  # its spec's name (datasets.py): statistics, classes, files


def parse_idx(raw: bytes, name: str = "IDX file", shape: tuple[int, int] = MNIST.shape) -> np.ndarray:
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
        if (rows, cols) != shape:
            raise DataError(f"{name}: images are {rows}x{cols}, this data set's images are {shape[0]}x{shape[1]}.")
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


def check_md5(raw: bytes, stem: str, name: str, spec: DatasetSpec = MNIST) -> None:
    """Compare the decompressed bytes with the published MD5 for `stem` (a spec without
    published checksums checks nothing)."""
    expected = spec.md5.get(stem)
    digest = hashlib.md5(raw).hexdigest()
    if expected is not None and digest != expected:
        raise DataError(
            f"{name}: MD5 of the decompressed content is {digest}, expected {expected} "
            f"for {stem}. The file is corrupted or is not the canonical {spec.title} file."
        )


def read_file(path: Path, stem: str, verify: bool = True, spec: DatasetSpec = MNIST) -> np.ndarray:
    """Read, optionally verify, and parse one data file from disk."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(f"{path}: {size} bytes is larger than any MNIST file.")
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}).") from err
    raw = decompress(raw, str(path))
    array = parse_idx(raw, str(path), spec.shape)  # first: "truncated" or "wrong magic" says more than an MD5
    if verify:
        check_md5(raw, stem, str(path), spec)
    return array


def find_file(folder: Path, stem: str) -> Path | None:
    """Locate `stem` (raw or .gz) in a flat folder or torchvision's ROOT/MNIST/raw/ layout."""
    for base in (folder, folder / "MNIST" / "raw", folder / "raw"):
        for candidate in (base / stem, base / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def missing_files(folder: Path, spec: DatasetSpec = MNIST) -> list[str]:
    """The stems of the four files that `folder` lacks."""
    return [stem for stem in spec.stems if find_file(folder, stem) is None]


def default_cache_dir() -> Path:
    """The project's own data cache: MNIST_CACHE_DIR, else ./data."""
    return settings.cache_dir()


def load_folder(folder: Path, source: str, verify: bool = True, origin: str = "", spec: DatasetSpec = MNIST) -> Mnist:
    """Load all four files of `spec` from `folder`, checking counts and that labels are classes."""
    missing = missing_files(folder, spec)
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (raw or .gz).")
    # In threads: gzip and MD5 release the GIL, so two cores halve the ~0.4 s of a cold load.
    with ThreadPoolExecutor(max_workers=len(spec.files)) as pool:
        loaded = {key: pool.submit(read_file, find_file(folder, stem), stem, verify, spec)  # type: ignore[arg-type]
                  for key, stem in spec.files.items()}
        arrays = {key: future.result() for key, future in loaded.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{folder}: the {split} image and label files are swapped.")
        if len(images) != len(labels):
            raise DataError(
                f"{folder}: {len(images)} {split} images but {len(labels)} {split} labels."
            )
        if labels.size and labels.max() >= len(spec.classes):
            raise DataError(f"{folder}: {split} labels contain {labels.max()}, not one of its {len(spec.classes)} classes.")
    return Mnist(
        train_images=torch.from_numpy(arrays["train_images"].copy()),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"].copy()),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        source=source,
        folder=folder,
        origin=origin,
        verified=verify and bool(spec.md5),
        dataset=spec.name,
    )


def describe_data(data: Mnist) -> str:
    """Where the data came from, in words a visitor may see (no paths), e.g.
    "MNIST from the server's data folder, verified, 70,000 images"."""
    name = f"MNIST {data.origin}" if data.origin else "MNIST"
    check = "verified" if data.verified else "not verified"
    return f"{name}, {check}, {len(data.train_labels) + len(data.test_labels):,} images"


def download(
    cache_dir: Path,
    timeout: float = 5.0,
    progress: Callable[[str, int, int], None] | None = None,
    read_only: bool | None = None,
) -> None:
    """Fetch the four files from torchvision's mirrors into `cache_dir`, verified.

    Each file is checked by its decompressed MD5 before it is moved into place, so an
    interrupted or corrupted download never leaves a file that looks valid. Refused in a
    read-only deployment, before anything is fetched.
    """
    refuse_if_read_only(read_only)
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
            raise DataError(
                "Download failed:\n  " + "\n  ".join(errors),
                public="The download from torchvision's mirrors failed.",
            )
    install_files(fetched, cache_dir, read_only=read_only)


def refuse_if_read_only(read_only: bool | None) -> None:
    """Storing data files is a write: refused in a read-only deployment (None: as MNIST_READ_ONLY says)."""
    if Limits.from_env().read_only if read_only is None else read_only:
        raise UploadRefused("This is a read-only demo: storing MNIST files is switched off.")


def upload_label(name: object, index: int) -> str:
    """A visitor's file name fit to show back: its last part only, printable, short."""
    text = PurePosixPath(name.replace("\\", "/")).name if isinstance(name, str) else ""
    text = "".join(c for c in text if c.isprintable())[:80]
    return text or f"file {index + 1}"


def install_files(
    files: Mapping[str, bytes | memoryview], cache_dir: Path, *, read_only: bool | None = None
) -> list[str]:
    """Validate uploaded or downloaded files and store them under fixed names in the cache.

    `files` maps any name to the file's bytes (raw or gzip); each is identified by its
    content, not its name, so a user-chosen file name never becomes a path. Either every
    file validates and is written, or nothing is written. Returns the stored stems.

    Raises UploadRefused (a message naming only the given file names) in a read-only deployment
    (`read_only`; None: as MNIST_READ_ONLY says), for more than the four files, beyond
    MAX_UPLOAD_FILE_BYTES per file or MAX_UPLOAD_BYTES in all (checked before anything is
    decompressed), or for content that is not MNIST; DataError when the cache cannot be written.
    """
    refuse_if_read_only(read_only)
    if len(files) > MAX_UPLOAD_FILES:
        raise UploadRefused(
            f"{len(files)} files at once: upload at most the {MAX_UPLOAD_FILES} MNIST files."
        )
    labelled = [(upload_label(name, i), raw) for i, (name, raw) in enumerate(files.items())]
    for label, raw in labelled:
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise UploadRefused(f"{label}: expected the file's bytes, got {type(raw).__name__}.")
        if len(raw) > MAX_UPLOAD_FILE_BYTES:
            raise UploadRefused(
                f"{label}: {len(raw):,} bytes is more than the {MAX_UPLOAD_FILE_BYTES:,} allowed "
                "per file; no MNIST file is that large."
            )
    total = sum(len(raw) for _, raw in labelled)
    if total > MAX_UPLOAD_BYTES:
        raise UploadRefused(
            f"{total:,} bytes in all is more than the {MAX_UPLOAD_BYTES:,} allowed per upload; "
            "the four MNIST files together are about 55 MB raw, 11 MB as .gz."
        )
    by_stem: dict[str, bytes] = {}
    digests = {md5: stem for stem, md5 in MD5.items()}
    for label, raw in labelled:
        try:
            plain = decompress(raw, label)
            stem = digests.get(hashlib.md5(plain).hexdigest())
            if stem is None:
                parse_idx(plain, label)  # a structural error is the more useful message
        except DataError as err:
            raise UploadRefused(str(err)) from err
        if stem is None:
            raise UploadRefused(f"{label}: a valid IDX file, but not one of the four MNIST files.")
        by_stem[stem] = plain
    staged: list[tuple[Path, Path]] = []
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
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
    except OSError as err:
        raise DataError(f"Could not store MNIST files in the data cache {cache_dir}: {err}") from err
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    load_cached.cache_clear()
    return sorted(by_stem)


@functools.lru_cache(maxsize=4)
def load_cached(folder: str, source: str, origin: str = "") -> Mnist:
    """Load a folder once per process: the dashboard's sessions all share this copy."""
    return load_folder(Path(folder), source, origin=origin)


def load_found(folder: Path, source: str, origin: str) -> Mnist:
    """Load a folder that holds all four files; any failed check becomes DataRefused."""
    try:
        return load_cached(str(folder), source, origin)
    except DataError as err:
        # The first line names no path: a worker shows it to visitors as a run's failure.
        raise DataRefused(f"MNIST files were found but refused.\n  {source}: {err}") from err


def load_mnist(
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_download: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> Mnist:
    """Find MNIST: `data_dir` or MNIST_DATA_DIR, then the ./data cache, then a download.

    Raises DataRefused when the first folder holding all four files fails a check (wrong
    magic, truncated, bad MD5, too large), and DataMissing saying what was tried and how to
    fix it when no folder holds them and no download succeeds.
    """
    tried: list[str] = []
    explicit = data_dir or settings.data_dir()
    if explicit:
        folder = Path(explicit).expanduser().resolve()
        label = "argument" if data_dir else "MNIST_DATA_DIR"
        if not missing_files(folder):
            origin = "from the given folder" if data_dir else "from the server's data folder"
            return load_found(folder, f"{label}={folder}", origin)
        tried.append(f"{label}={folder}: missing {', '.join(missing_files(folder))}")
    cache = Path(cache_dir).resolve() if cache_dir else default_cache_dir()
    if not missing_files(cache):
        return load_found(cache, f"data cache {cache}", "from the data cache")
    tried.append(f"data cache {cache}: missing {', '.join(missing_files(cache))}")
    public = None
    if allow_download and settings.downloads_allowed():
        try:
            download(cache, progress=progress)
        except DataError as err:
            tried.append(str(err))
            public = f"{DataMissing.public} {err.public}"
        else:
            return load_found(cache, f"downloaded into {cache}", "downloaded from torchvision's mirrors")
    raise DataMissing(
        "MNIST data not found. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nFix: set MNIST_DATA_DIR to a folder holding the four IDX files (raw or .gz), "
        f"or copy them into {cache}, or upload them on the dashboard's data page.",
        public=public,
    )


_logged: set[str] = set()


def log_refusal(error: DataError) -> None:
    """Tell the operator the whole reason the data cannot be used, on the server's log (stderr),
    once per distinct reason rather than at every page view. A visitor's refused upload is
    their own doing: it is shown to them, not logged."""
    reason = str(error)
    if isinstance(error, UploadRefused) or reason in _logged:
        return
    _logged.add(reason)
    log.warning("%s", reason)


def pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of pixel values scaled to [0, 1] (float64, exact enough)."""
    x = images.to(torch.float64).div_(255.0)
    return float(x.mean()), float(x.std(correction=0))


def class_counts(labels: torch.Tensor) -> list[int]:
    """How many examples of each digit 0..9."""
    return torch.bincount(labels, minlength=10).tolist()


def normalise(images: torch.Tensor, dataset: str = DEFAULT) -> torch.Tensor:
    """uint8 Nx28x28 -> float32 Nx1x28x28 with the training set's mean 0 and std 1 (the
    statistics of `dataset`'s spec).

    Networks train faster on centred inputs of unit scale: gradients of all pixels are then of
    similar size, so one learning rate suits every weight.
    """
    spec = spec_for(dataset)
    return images.unsqueeze(1).to(torch.float32).div_(255.0).sub_(spec.mean).div_(spec.std)


def load_dataset(name: str, folder: str | Path, verify: bool = True) -> Mnist:
    """A dataset other than MNIST's own chain: the four files of spec `name` from `folder`,
    checked as MNIST's are (magic, shape, counts, labels, and MD5 where its spec has them)."""
    spec = spec_for(name)
    folder = Path(folder).expanduser().resolve()
    try:
        return load_folder(folder, f"{spec.title} in {folder}", verify, f"{spec.title} from the given folder", spec)
    except DataError as err:
        raise DataRefused(f"{spec.title} files were found but refused.\n  {folder}: {err}") from err
