"""Fuzzing the two places where strangers' bytes enter the dashboard: the MNIST file upload
(IDX parsing, gzip, install) and the Draw page's picture upload.

Each property compares the code with an independent oracle (Python's own gzip module, a
from-the-spec IDX reader, Pillow's decoded size) instead of only checking "did not crash", so a
wrong answer fails as surely as an unexpected exception.
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_core.engine.data import IMAGE_MAGIC, LABEL_MAGIC, DataError, decompress, install_files, parse_idx
from mnist_core.engine.preprocess import ImageError, load_uploaded_image, mnist_style

# Pillow warns about the damaged files it is fed here; that is expected, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# For tests parametrized over every picture format: a few examples for each of them.
EACH = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- IDX files and gzip ---------------------------------------------------------------------

def idx_oracle(raw: bytes) -> np.ndarray | None:
    """What the IDX spec (restricted to MNIST's two layouts) says `raw` holds; None if invalid."""
    if len(raw) >= 8 and raw[:4] == struct.pack(">I", LABEL_MAGIC):
        count = int.from_bytes(raw[4:8], "big")
        if len(raw) == 8 + count:
            return np.array(list(raw[8:]), dtype=np.uint8)
    if len(raw) >= 16 and raw[:4] == struct.pack(">I", IMAGE_MAGIC):
        count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
        if rows == cols == 28 and len(raw) == 16 + count * 784:
            return np.array(list(raw[16:]), dtype=np.uint8).reshape(count, 28, 28)
    return None


def gzip_oracle(raw: bytes) -> bytes | None:
    """Python's gzip module on a gzip file (all members, zero padding allowed); None if invalid."""
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error):
        return None


@st.composite
def near_valid_idx(draw: st.DrawFn) -> bytes:
    """IDX bytes that are valid, or one plausible mistake away from it: another magic number,
    count or size, a payload a byte short or long, a cut header."""
    kind = draw(st.sampled_from(["labels", "images", "other"]))
    magic = {"labels": LABEL_MAGIC, "images": IMAGE_MAGIC}.get(kind) or draw(st.integers(0, 2**32 - 1))
    count = draw(st.one_of(st.integers(0, 5), st.integers(0, 2**32 - 1)))
    header = struct.pack(">II", magic, count)
    item = 1
    if kind != "labels":
        rows, cols = draw(st.one_of(st.just((28, 28)), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 40))))
        header += struct.pack(">II", rows, cols)
        item = 784
    exact = count * item
    length = draw(st.sampled_from([exact, exact - 1, exact + 1, draw(st.integers(0, 3000))]))
    length = min(max(length, 0), 5 * 784 + 1)  # a huge count is simply "truncated"
    payload = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, length, dtype=np.uint8)
    raw = header + payload.tobytes()
    return raw[: draw(st.sampled_from([len(raw), draw(st.integers(0, len(header)))]))]


@st.composite
def packed(draw: st.DrawFn, content: st.SearchStrategy[bytes]) -> bytes:
    """`content` stored as a user might upload it: plain, gzip, or a damaged or unusual gzip."""
    raw = draw(content)
    how = draw(st.sampled_from(
        ["plain", "gzip", "cut", "garbage-after", "zeros-after", "two-members", "flipped-byte"]
    ))
    if how == "plain":
        return raw
    whole = gzip.compress(raw, mtime=0)
    if how == "gzip":
        return whole
    if how == "cut":
        return whole[: draw(st.integers(0, len(whole) - 1))]
    if how == "garbage-after":
        return whole + draw(st.binary(min_size=1, max_size=20))
    if how == "zeros-after":
        return whole + b"\0" * draw(st.integers(1, 9))
    if how == "two-members":  # what bgzip or `cat a.gz b.gz` produce: one file, split anywhere
        cut = draw(st.integers(0, len(raw)))
        return gzip.compress(raw[:cut], mtime=0) + gzip.compress(raw[cut:], mtime=0)
    position = draw(st.integers(0, len(whole) - 1))
    return whole[:position] + bytes([whole[position] ^ draw(st.integers(1, 255))]) + whole[position + 1 :]


def check_idx_pipeline(blob: bytes) -> None:
    """decompress then parse_idx: the same bytes as the oracles, or DataError, nothing else."""
    expected_plain = gzip_oracle(blob) if blob[:2] == b"\x1f\x8b" else blob
    try:
        plain = decompress(blob, "upload")
    except DataError:
        assert expected_plain is None, "decompress refused a valid gzip file"
        return
    assert plain == expected_plain, "decompress returned other bytes than the file holds"
    expected = idx_oracle(plain)
    try:
        array = parse_idx(plain, "upload")
    except DataError:
        assert expected is None, "parse_idx refused a valid IDX file"
        return
    assert expected is not None, "parse_idx accepted an invalid IDX file"
    assert array.dtype == np.uint8 and array.shape == expected.shape
    assert np.array_equal(array, expected)


@FUZZ
@given(st.binary(max_size=2000))
@example(b"")
@example(struct.pack(">II", LABEL_MAGIC, 0))
@example(struct.pack(">IIII", IMAGE_MAGIC, 0, 28, 28))
def test_arbitrary_bytes_parse_or_fail_cleanly(blob: bytes) -> None:
    check_idx_pipeline(blob)
    check_idx_pipeline(b"\x1f\x8b" + blob)  # also as a (mostly broken) gzip stream


@FUZZ
@given(packed(near_valid_idx()))
def test_near_valid_idx_files_parse_exactly_or_fail_cleanly(blob: bytes) -> None:
    check_idx_pipeline(blob)


def test_a_multi_member_gzip_is_read_whole() -> None:
    """bgzip and `cat a.gz b.gz` write several members; all of them are the file's content."""
    labels = struct.pack(">II", LABEL_MAGIC, 6) + bytes([5, 0, 4, 1, 9, 2])
    blob = gzip.compress(labels[:7]) + gzip.compress(labels[7:]) + b"\0\0"
    assert parse_idx(decompress(blob, "split.gz")).tolist() == [5, 0, 4, 1, 9, 2]
    with pytest.raises(DataError, match="not a valid gzip"):
        decompress(gzip.compress(labels) + b"trailing junk", "junk.gz")


@FUZZ
@given(st.dictionaries(
    st.text(max_size=30),
    st.one_of(st.binary(max_size=500), packed(near_valid_idx())),
    min_size=1, max_size=4,
))
def test_install_of_foreign_files_fails_and_writes_nothing(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        with pytest.raises(DataError):
            install_files(files, cache)
        assert list(Path(folder).rglob("*")) == [], "a refused upload left files behind"


def test_install_is_all_or_nothing_with_one_bad_file(mnist) -> None:
    """A genuine MNIST file next to a broken one: the genuine one is not written either."""
    genuine = next(Path(mnist.folder).glob("t10k-labels*")).read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        with pytest.raises(DataError, match="broken.gz"):
            install_files({"labels.gz": genuine, "broken.gz": genuine[:-100]}, cache)
        assert list(Path(folder).rglob("*")) == []


# --- picture uploads ------------------------------------------------------------------------

# (format, mode) pairs Pillow writes and reads back, including the Draw page's upload types.
PICTURES = [
    ("PNG", "1"), ("PNG", "L"), ("PNG", "LA"), ("PNG", "P"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "I;16"),
    ("GIF", "L"), ("GIF", "P"), ("GIF", "RGB"), ("BMP", "1"), ("BMP", "L"), ("BMP", "RGB"), ("BMP", "RGBA"),
    ("JPEG", "L"), ("JPEG", "RGB"), ("JPEG", "CMYK"), ("WEBP", "L"), ("WEBP", "RGB"), ("WEBP", "RGBA"),
    ("TIFF", "1"), ("TIFF", "L"), ("TIFF", "LA"), ("TIFF", "RGB"), ("TIFF", "RGBA"), ("TIFF", "CMYK"),
    ("TIFF", "YCbCr"), ("TIFF", "I"), ("TIFF", "I;16"), ("TIFF", "F"), ("PPM", "L"), ("PPM", "RGB"),
    ("PPM", "I;16"), ("ICO", "RGBA"), ("TGA", "RGBA"), ("QOI", "RGB"),
]
# Signatures that route random bytes into a specific decoder instead of "unknown format".
MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBP",
          b"P5\n", b"\x00\x00\x01\x00", b"qoif"]


@st.composite
def pictures(draw: st.DrawFn, fmt: str, mode: str) -> bytes:
    """A small valid picture of random size: noise, a blob on a background, or flat. Integer
    modes get noise over their whole range; float pictures normal noise or a mix of extremes
    (+-3e38, +-inf, NaN), which a float TIFF may hold."""
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    content = draw(st.sampled_from(["noise", "blob", "flat"]))
    if mode == "F":
        extremes = np.array([0, 1, -1, 1e-30, 3e38, -3e38, np.inf, -np.inf, np.nan], np.float32)
        if content == "noise":
            pixels = rng.normal(0, 1, (height, width)).astype(np.float32)
        else:
            pixels = rng.choice(extremes, (height, width))
        image = Image.fromarray(pixels)
    elif mode in ("I", "I;16"):
        top = 2**31 - 1 if mode == "I" else 2**16 - 1
        low = -(2**31) if mode == "I" else 0
        pixels = rng.integers(low, top, (height, width), endpoint=True)
        image = Image.fromarray(pixels.astype(np.int32 if mode == "I" else np.uint16))
    else:
        if content == "noise":
            gray = rng.integers(0, 256, (height, width), dtype=np.uint8)
        else:
            gray = np.full((height, width), rng.integers(0, 256), dtype=np.uint8)
            if content == "blob":
                gray[height // 4 : height * 3 // 4 + 1, width // 3 : width * 2 // 3 + 1] = 255 - gray[0, 0]
        image = Image.fromarray(gray).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def check_ink(ink: np.ndarray) -> None:
    """The contract of load_uploaded_image and then mnist_style on its result."""
    assert isinstance(ink, np.ndarray) and ink.dtype == np.float32 and ink.ndim == 2 and ink.size > 0
    assert np.isfinite(ink).all() and ink.min() >= 0.0 and ink.max() <= 1.0
    digit = mnist_style(ink)
    if digit is not None:
        assert digit.shape == (28, 28) and digit.dtype == np.float32
        assert np.isfinite(digit).all() and digit.min() >= 0.0 and digit.max() <= 1.0


def read_or_refuse(data: bytes) -> None:
    try:
        ink = load_uploaded_image(data)
    except ImageError:
        return
    check_ink(ink)


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=600))
def test_random_bytes_are_an_image_error_or_a_valid_image(magic: bytes, tail: bytes) -> None:
    read_or_refuse(magic + tail)


@pytest.mark.parametrize("fmt, mode", PICTURES)
@EACH
@given(data=st.data())
def test_valid_pictures_of_every_mode_are_read(fmt: str, mode: str, data: st.DataObject) -> None:
    picture = data.draw(pictures(fmt, mode), label="picture")
    expected = Image.open(io.BytesIO(picture))
    expected.load()
    ink = load_uploaded_image(picture)  # a valid picture must never be refused
    assert ink.shape == (expected.height, expected.width)
    check_ink(ink)


@pytest.mark.parametrize("fmt, mode", PICTURES)
@EACH
@given(data=st.data())
def test_damaged_pictures_are_an_image_error_or_a_valid_image(fmt: str, mode: str, data: st.DataObject) -> None:
    raw = bytearray(data.draw(pictures(fmt, mode), label="picture"))
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(1, len(raw)), label="length")]
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        position = data.draw(st.integers(0, len(raw) - 1), label="position")
        raw[position] = data.draw(st.integers(0, 255), label="byte")
    read_or_refuse(bytes(raw))


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (3000, 2), (2, 3000)])
def test_degenerate_shapes_are_read(size: tuple[int, int]) -> None:
    """A one-pixel picture, and strips so thin that shrinking or scaling them to 20 px rounds a
    side to zero unless guarded."""
    image = Image.new("L", size, 0)
    image.paste(255, (0, 0, max(1, size[0] // 2), max(1, size[1] // 2)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    check_ink(load_uploaded_image(buffer.getvalue()))


def test_float_picture_with_extreme_values_is_not_nan() -> None:
    """A float TIFF may hold +-3e38 or inf; scaling it by its range must not overflow to NaN."""
    pixels = np.zeros((40, 40), dtype=np.float32)
    pixels[5:35, 15:25] = 3e38
    pixels[0, 0], pixels[0, 1] = -3e38, np.inf
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF")
    ink = load_uploaded_image(buffer.getvalue())
    check_ink(ink)
    assert ink[20, 20] > 0.9 and ink[20, 5] == 0.0  # the bar is ink, the rest background
