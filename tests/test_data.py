"""The IDX reader, the verification and the data-source chain (mnist_core/engine/data.py)."""

from __future__ import annotations

import gzip
import io
import logging
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_core.engine import data
from tests.synthetic import idx_images, idx_labels
from mnist_core.engine.data import (
    DataError,
    DataMissing,
    DataRefused,
    UploadRefused,
    describe_data,
    find_file,
    install_files,
    load_folder,
    load_mnist,
    log_refusal,
    parse_idx,
    pixel_stats,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def tiny() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), rng.integers(0, 10, 5, dtype=np.uint8)


def test_parses_valid_images_and_labels(tiny):
    images, labels = tiny
    assert np.array_equal(parse_idx(idx_images(images)), images)
    assert np.array_equal(parse_idx(idx_labels(labels)), labels)


def test_accepts_gzip_and_raw_files_identically(tmp_path, tiny):
    images, _ = tiny
    raw = idx_images(images)
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "b.gz").write_bytes(gzip.compress(raw))
    a = data.read_file(tmp_path / "a", "x", verify=False)
    b = data.read_file(tmp_path / "b.gz", "x", verify=False)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw[:-10], "truncated"),
        (lambda raw: raw + b"\0", "trailing"),
        (lambda raw: struct.pack(">I", 0x804) + raw[4:], "magic number"),
        (lambda raw: raw[:4] + struct.pack(">I", 6) + raw[8:], "promises 6 items"),
        (lambda raw: raw[:8] + struct.pack(">II", 32, 32) + raw[16:], "32x32"),
        (lambda raw: raw[:5], "too short"),
    ],
    ids=["truncated", "trailing-bytes", "wrong-magic", "count-mismatch", "wrong-size", "tiny"],
)
def test_malformed_files_give_clear_errors(tiny, mutate, message):
    with pytest.raises(DataError, match=message):
        parse_idx(mutate(idx_images(tiny[0])), "test file")


def test_truncated_gzip_and_non_gzip_garbage_are_rejected(tiny):
    packed = gzip.compress(idx_images(tiny[0]))
    with pytest.raises(DataError, match="truncated"):
        data.decompress(packed[: len(packed) // 2], "half.gz")
    with pytest.raises(DataError, match="not a valid gzip"):
        data.decompress(b"\x1f\x8b" + b"garbage" * 10, "bad.gz")


def test_gzip_bomb_is_capped(monkeypatch):
    monkeypatch.setattr(data, "MAX_FILE_BYTES", 1000)
    with pytest.raises(DataError, match="more than 1000 bytes"):
        data.decompress(gzip.compress(b"\0" * 5000), "bomb.gz")


def test_md5_mismatch_names_the_file(tmp_path, tiny):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(idx_labels(tiny[1]))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*MD5"):
        data.read_file(path, "train-labels-idx1-ubyte")


def test_finds_flat_and_torchvision_layouts(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"x")
    assert find_file(tmp_path, "t10k-labels-idx1-ubyte") == raw / "t10k-labels-idx1-ubyte.gz"
    assert find_file(tmp_path, "train-labels-idx1-ubyte") == tmp_path / "train-labels-idx1-ubyte"
    assert find_file(tmp_path, "train-images-idx3-ubyte") is None


def test_count_mismatch_between_images_and_labels(tmp_path, tiny):
    images, labels = tiny
    for stem, payload in [
        ("train-images-idx3-ubyte", idx_images(images)), ("train-labels-idx1-ubyte", idx_labels(labels[:4])),
        ("t10k-images-idx3-ubyte", idx_images(images)), ("t10k-labels-idx1-ubyte", idx_labels(labels)),
    ]:
        (tmp_path / stem).write_bytes(payload)
    with pytest.raises(DataError, match="5 train images but 4 train labels"):
        load_folder(tmp_path, "test", verify=False)


def test_missing_data_error_says_what_was_tried_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as info:
        load_mnist(cache_dir=tmp_path / "cache", allow_download=False)
    text = str(info.value)
    assert "MNIST_DATA_DIR" in text and "cache" in text and "upload" in text


def test_offline_download_fails_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MIRRORS", ("http://127.0.0.1:9/", "http://192.0.2.1.invalid/"))
    start = time.monotonic()
    with pytest.raises(DataError, match="Download failed"):
        data.download(tmp_path, timeout=2.0)
    assert time.monotonic() - start < 10
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_install_rejects_foreign_file_and_writes_nothing(tmp_path, tiny):
    with pytest.raises(DataError, match="not one of the four MNIST files"):
        install_files({"evil/../../name": idx_images(tiny[0])}, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- refusals: the operator's reason, the visitor's short text --------------------------------

ABSOLUTE_PATH = re.compile(r"(^|[\s'\"`=(])/[\w.-]+/")


def assert_no_path(text: str, *folders: Path) -> None:
    assert not ABSOLUTE_PATH.search(text), f"an absolute path in {text!r}"
    assert not any(str(folder) in text for folder in folders), text


def write_set(folder: Path, tiny, **replace: bytes) -> Path:
    """The four files as tiny, well-formed IDX files (so only the MD5 is wrong), some replaced."""
    images, labels = tiny
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in data.FILES.items():
        payload = idx_images(images) if "images" in key else idx_labels(labels)
        (folder / stem).write_bytes(replace.get(key, payload))
    return folder


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("bad-magic", "magic number 0x00000804"),
        ("truncated", "it truncated"),
        ("wrong-md5", "MD5 of the decompressed content"),
        ("too-large", "larger than any MNIST file"),
        ("gzip-bomb", "decompresses to more than"),
    ],
)
def test_found_but_unusable_files_are_refused_with_the_operators_reason(
    tmp_path, tiny, monkeypatch, caplog, kind, reason
):
    good = idx_images(tiny[0])
    bad = {
        "bad-magic": struct.pack(">I", 0x804) + good[4:],
        "truncated": good[:-10],
        "wrong-md5": good,
        "too-large": b"\0" * 5000,
        "gzip-bomb": gzip.compress(b"\0" * 50_000),
    }[kind]
    monkeypatch.setattr(data, "MAX_FILE_BYTES", 4000)
    folder = write_set(tmp_path / "mnist", tiny, train_images=bad)
    monkeypatch.setenv("MNIST_DATA_DIR", str(folder))
    with pytest.raises(DataRefused) as info:
        load_mnist(cache_dir=tmp_path / "cache", allow_download=False)
    error = info.value
    assert reason in str(error) and "train-images-idx3-ubyte" in str(error)
    assert str(error).splitlines()[0] == "MNIST files were found but refused."  # what a worker shows
    assert error.public == "MNIST files on this server could not be used; the operator's log says why."
    assert_no_path(error.public, tmp_path)

    with caplog.at_level(logging.WARNING, logger="mnist_core.engine.data"):
        for _ in range(3):  # three page views, one log line
            log_refusal(error)
    assert [r.getMessage() for r in caplog.records] == [str(error)]


def test_missing_data_is_not_a_refusal_and_its_public_text_names_no_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataMissing) as info:
        load_mnist(cache_dir=tmp_path / "cache", allow_download=False)
    assert str(tmp_path) in str(info.value)  # the operator's text says where it looked
    assert_no_path(info.value.public, tmp_path)


def test_an_unreadable_file_is_a_data_error_not_a_crash(tmp_path):
    (tmp_path / "train-labels-idx1-ubyte").mkdir()
    with pytest.raises(DataError, match="cannot be read"):
        data.read_file(tmp_path / "train-labels-idx1-ubyte", "train-labels-idx1-ubyte")


@pytest.mark.parametrize(
    "files, patch, reason",
    [
        ({f"f{i}": b"x" for i in range(5)}, {}, "5 files at once: upload at most the 4 MNIST files"),
        ({"big.gz": b"x" * 2000}, {"MAX_UPLOAD_FILE_BYTES": 1000}, "big.gz: 2,000 bytes is more than the 1,000"),
        ({"a": b"x" * 600, "b": b"x" * 600}, {"MAX_UPLOAD_BYTES": 1000}, "1,200 bytes in all is more than the 1,000"),
        ({"/srv/secret/in.gz": io.BytesIO(b"x")}, {}, "in.gz: expected the file's bytes, got BytesIO"),
    ],
    ids=["too-many", "file-too-large", "upload-too-large", "not-bytes"],
)
def test_uploads_are_bounded_before_anything_is_decompressed(tmp_path, monkeypatch, files, patch, reason):
    for name, value in patch.items():
        monkeypatch.setattr(data, name, value)
    monkeypatch.setattr(data, "decompress", lambda *a: pytest.fail("decompressed before the caps were checked"))
    with pytest.raises(UploadRefused) as info:
        install_files(files, tmp_path / "cache", read_only=False)
    assert reason in str(info.value) and info.value.public == str(info.value)
    assert_no_path(info.value.public, tmp_path)
    assert "0x" not in info.value.public and "/srv" not in info.value.public
    assert not (tmp_path / "cache").exists()


def test_uploads_are_refused_in_read_only_mode(tmp_path, tiny, monkeypatch):
    with pytest.raises(UploadRefused, match="read-only demo"):
        install_files({"a": idx_labels(tiny[1])}, tmp_path / "cache", read_only=True)
    monkeypatch.setenv("MNIST_READ_ONLY", "1")  # the default follows the deployment's setting
    with pytest.raises(UploadRefused, match="read-only demo"):
        install_files({"a": idx_labels(tiny[1])}, tmp_path / "cache")
    with pytest.raises(UploadRefused, match="read-only demo"):
        data.download(tmp_path / "cache")  # refused before anything is fetched
    assert not (tmp_path / "cache").exists()


def test_a_refused_upload_names_only_the_visitors_file_and_is_not_logged(tmp_path, tiny, caplog):
    with pytest.raises(UploadRefused) as info:
        install_files({str(tmp_path / "dir" / "upload.gz"): idx_images(tiny[0])[:-3]}, tmp_path / "cache")
    assert info.value.public.startswith("upload.gz: ") and "truncated" in info.value.public
    assert_no_path(info.value.public, tmp_path)
    with caplog.at_level(logging.WARNING, logger="mnist_core.engine.data"):
        log_refusal(info.value)
    assert not caplog.records


def test_an_unwritable_cache_is_an_operator_problem(mnist, tmp_path):
    genuine = next(Path(mnist.folder).glob("t10k-labels*")).read_bytes()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError) as info:
        install_files({"labels.gz": genuine}, tmp_path / "file" / "cache", read_only=False)
    assert not isinstance(info.value, UploadRefused) and str(tmp_path) in str(info.value)
    assert_no_path(info.value.public, tmp_path)


def test_describe_data_says_where_in_words():
    from tests.synthetic import synthetic_mnist

    assert describe_data(synthetic_mnist()) == "MNIST, not verified, 800 images"


# --- the real files -------------------------------------------------------------------------

def test_real_set_counts_labels_and_statistics(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.dtype == torch.int64 and len(mnist.test_labels) == 10000
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    mean, std = pixel_stats(mnist.train_images)
    assert (round(mean, 4), round(std, 4)) == (0.1307, 0.3081)


def test_warm_load_is_under_a_second(mnist):
    data.load_cached.cache_clear()
    load_mnist(allow_download=False)  # cold: decompress and verify
    start = time.perf_counter()
    load_mnist(allow_download=False)
    assert time.perf_counter() - start < 1.0


def test_install_verifies_and_stores_real_files_under_fixed_names(mnist, tmp_path):
    source = Path(mnist.folder)
    uploads = {f"upload-{i}.bin": p.read_bytes() for i, p in enumerate(sorted(source.glob("*labels*")))}
    stored = install_files(uploads, tmp_path)
    assert stored == ["t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"]
    assert sorted(p.name for p in tmp_path.iterdir()) == stored


def test_cli_data_prints_the_figures(mnist):
    out = subprocess.run(
        [sys.executable, "-m", "mnist_core", "data"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert "train: 60000 images, test: 10000 images" in out
    assert "5 0 4 1 9" in out
    assert "mean 0.1307, std 0.3081" in out


def test_real_set_is_described_without_its_path(mnist):
    assert describe_data(mnist) == "MNIST from the server's data folder, verified, 70,000 images"
