"""Turn a user's drawing or uploaded picture into the 28x28 image an MNIST model expects.

A model trained on MNIST only works on inputs made the way MNIST was made: bright ink on a
black background, the digit scaled so its longer side is 20 pixels (aspect ratio kept, with
anti-aliasing), then placed in a 28x28 frame so that its centre of mass is at the centre.
A raw canvas resized straight to 28x28 (thin, off-centre, wrong polarity) is misread far more
often, so every user input goes through `mnist_style` first.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from mnist_core.engine.data import MEAN, STD

SIZE = 28  # The MNIST frame.
BOX = 20  # The longer side of the digit inside it.
CENTRE = 14.0  # Where MNIST's centres of mass sit, in pixel-index coordinates (measured: 14.0).
INK_THRESHOLD = 0.1  # Pixels at least this bright count as ink.
MIN_INK_PIXELS = 5  # Fewer ink pixels than this is a stray speck, not a digit.
MAX_PIXELS = 4096 * 4096
WORK_SIDE = 1024  # Uploads are shrunk to at most this side before any float arithmetic.
# Pillow modes holding one integer or float channel: scaled by their actual range, since a
# 16-bit PNG may use 0..255, 0..4095 or 0..65535 depending on what wrote it.
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class ImageError(ValueError):
    """An uploaded file is not a usable image (corrupt, unsupported or too large)."""


def border(values: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels: where the background shows even when the digit is big."""
    if values.shape[0] <= 2 or values.shape[1] <= 2:
        return values.ravel()
    return np.concatenate([values[0], values[-1], values[1:-1, 0], values[1:-1, -1]])


def ink_from_luminance(lum: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Luminance (and optional opacity) in [0, 1] -> float32 ink in [0, 1], background 0.

    Transparent pixels are composited onto the background: the border's colour when the
    border is opaque, otherwise the opposite of the visible strokes (white strokes on a
    transparent canvas are ink, so are black ones). A bright background (black ink on white
    paper) is inverted. Finally the background level is subtracted so grey paper becomes 0;
    a uniform image comes out all zeros rather than dividing by zero.
    """
    lum = np.asarray(lum, dtype=np.float32)
    if alpha is not None:
        alpha = np.asarray(alpha, dtype=np.float32)
        if float(alpha.min()) < 1.0:
            edge_alpha = border(alpha)
            if float(np.median(edge_alpha)) < 0.5:
                visible = alpha > 0.5
                if not visible.any():
                    visible = alpha > 0
                if not visible.any():
                    return np.zeros(lum.shape, dtype=np.float32)
                ink_is_bright = float(np.median(lum[visible])) >= 0.5
                fill = 0.0 if ink_is_bright else 1.0
            else:
                fill = float(np.median(border(lum)[edge_alpha >= 0.5]))
            lum = alpha * lum + (1.0 - alpha) * fill
    background = float(np.median(border(lum)))
    if background > 0.5:
        lum = 1.0 - lum
        background = 1.0 - background
    headroom = 1.0 - background
    if headroom < 1e-3:
        return np.zeros(lum.shape, dtype=np.float32)
    return np.clip((lum - background) / headroom, 0.0, 1.0).astype(np.float32)


def canvas_to_gray(rgba: np.ndarray) -> np.ndarray:
    """A drawing as an RGBA array (H x W x 4 uint8) -> float32 H x W ink in [0, 1].

    Works for white strokes on black, black strokes on white and strokes on a transparent
    background alike; also accepts H x W (grey), H x W x 1 and H x W x 3 arrays.
    """
    array = np.asarray(rgba)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"expected an H x W x 4 RGBA array, got shape {array.shape}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the canvas is empty (shape {array.shape}).")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"expected numeric pixel values, got dtype {array.dtype}.")
    values = array.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise ValueError("pixel values must be finite and within 0..255.")
    values /= 255.0
    if values.ndim == 2:
        return ink_from_luminance(values)
    lum = 0.299 * values[:, :, 0] + 0.587 * values[:, :, 1] + 0.114 * values[:, :, 2]
    alpha = values[:, :, 3] if values.shape[2] == 4 else None
    return ink_from_luminance(lum, alpha)


def mnist_style(gray: np.ndarray) -> np.ndarray | None:
    """Bright-ink H x W image in [0, 1] -> float32 28x28 made the MNIST way, or None if blank.

    Crops to the ink, scales the crop's peak to 1 (MNIST strokes are saturated whatever pen
    the user chose), resizes the longer side to 20 px with anti-aliasing, and shifts it so its
    centre of mass sits at (14, 14), as far as the 28x28 frame allows.
    """
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a non-empty H x W image, got shape {gray.shape}.")
    if not np.isfinite(gray).all():
        raise ValueError("the image contains NaN or infinite values.")
    if float(gray.min()) < 0.0 or float(gray.max()) > 1.001:
        raise ValueError(
            f"expected ink values in [0, 1], got {float(gray.min()):g}..{float(gray.max()):g} "
            "(divide 0..255 images by 255, or use canvas_to_gray)."
        )
    ink = gray >= INK_THRESHOLD
    if int(ink.sum()) < MIN_INK_PIXELS:
        return None
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = np.clip(gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 0.0, 1.0)
    crop = np.ascontiguousarray(crop / float(crop.max()), dtype=np.float32)
    height, width = crop.shape
    scale = BOX / max(height, width)
    new_h = max(1, round(height * scale))
    new_w = max(1, round(width * scale))
    resized = Image.fromarray(crop).resize(  # float32 -> Pillow mode "F"
        (new_w, new_h), Image.Resampling.LANCZOS
    )
    digit = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    mass = float(digit.sum())
    if mass <= 0:
        return None
    cy = float((digit.sum(axis=1) * np.arange(new_h)).sum()) / mass
    cx = float((digit.sum(axis=0) * np.arange(new_w)).sum()) / mass
    top = int(np.clip(round(CENTRE - cy), 0, SIZE - new_h))
    left = int(np.clip(round(CENTRE - cx), 0, SIZE - new_w))
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = digit
    return out


def normalise(img28: np.ndarray) -> torch.Tensor:
    """A 28x28 image in [0, 1] -> the 1x1x28x28 float32 batch the models were trained on."""
    array = np.asarray(img28, dtype=np.float32)
    if array.shape != (SIZE, SIZE):
        raise ValueError(f"expected a 28x28 image, got shape {array.shape}.")
    return ((torch.from_numpy(array.copy()) - MEAN) / STD).reshape(1, 1, SIZE, SIZE)


def load_uploaded_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an uploaded file into float32 H x W ink in [0, 1] (bright ink, dark background).

    Only the first frame of an animated image is used and EXIF rotation is applied. The size
    is checked from the header before any pixels are decoded, so a tiny file that claims to be
    enormous (a decompression bomb) is refused without allocating it. Pictures with a side
    over 1024 px are shrunk first: the digit ends up 20 px tall anyway, and a 4096x4096 photo
    would otherwise take hundreds of MB as float arrays. Raises ImageError for anything that
    is not a readable image.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected the file's bytes, got {type(data).__name__}.")
    if len(data) == 0:
        raise ImageError("the file is empty.")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces Pillow's generic bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(bytes(data)))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"the image is {width}x{height} pixels, more than the {max_pixels} allowed; "
                    "please upload a smaller picture."
                )
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode not in WIDE_MODES:
                image = image.convert("RGBA")
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"the image is too large to decode safely ({err}).") from err
    except Exception as err:
        # Pillow's format plugins signal malformed input with many exception types
        # (OSError, SyntaxError, struct.error, EOFError, ...): all mean "unreadable file".
        # Pillow's own text can quote the in-memory file object ("<_io.BytesIO object at 0x…>"):
        # the visitor gets the kind of failure, the chained exception keeps the detail.
        raise ImageError(f"not a readable image file ({type(err).__name__}).") from err
    if image.width == 0 or image.height == 0:
        raise ImageError(f"the image has no pixels ({image.width}x{image.height}).")
    return image_to_ink(image)


def shrink(image: Image.Image, side: int = WORK_SIDE) -> Image.Image:
    """Downscale (area-averaging) so neither side exceeds `side`; smaller images pass as is."""
    if max(image.size) <= side:
        return image
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)


def image_to_ink(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image (RGBA or a one-channel integer/float mode) -> float32 ink."""
    if image.mode in WIDE_MODES:
        # Finite and bounded, so neither (values - low) nor (high - low) overflows float32: a
        # float TIFF may hold inf or +-3e38, which would otherwise turn the whole image into NaN.
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        np.clip(values, -1e30, 1e30, out=values)
        low, high = float(values.min()), float(values.max())
        if high - low <= 0:
            values = np.zeros(values.shape, dtype=np.float32)
        else:
            values = (values - low) / (high - low)
        return ink_from_luminance(np.asarray(shrink(Image.fromarray(values)), dtype=np.float32))
    rgba = np.asarray(shrink(image.convert("RGBA")), dtype=np.float32) / 255.0
    lum = 0.299 * rgba[:, :, 0] + 0.587 * rgba[:, :, 1] + 0.114 * rgba[:, :, 2]
    return ink_from_luminance(lum, rgba[:, :, 3])
