"""Predicting drawn or uploaded digits with a trained model, and shaping what the Evaluate and
Draw pages show (galleries, tables, chart picks). Loading a stored run is service/results.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from mnist_core.engine.evaluate import Evaluation
from mnist_core.engine.models import Classifier
from mnist_core.engine.preprocess import load_uploaded_image, mnist_style, normalise

# Drawn strokes are redrawn with a pen whose width is this fraction of the drawing's longer side:
# after MNIST-style scaling to a 20-pixel box that is about 3 pixels, as thick as MNIST's own
# strokes (its 1s carry about 3 pixels of ink per row), whether the digit was drawn small or large.
PEN = 0.15
MIN_EXTENT = 0.05  # a dot or a tiny scribble is drawn as if it spanned 5% of the canvas
RENDER_SIDE = 160  # pixels the drawing's longer side gets before mnist_style shrinks it to 20
MAX_STROKES = 200  # more is not a digit; the browser sends what it likes, so it is bounded here
MAX_POINTS = 20_000


def class_table(evaluation: Evaluation) -> pd.DataFrame:
    """Per-digit precision, recall, F1 and support, one row per digit."""
    return pd.DataFrame({
        "digit": np.arange(10),
        "precision": evaluation.precision,
        "recall": evaluation.recall,
        "F1": evaluation.f1,
        "support": evaluation.support.astype(int),
    })


def most_confused(confusion: np.ndarray) -> tuple[int, int]:
    """The (true, predicted) off-diagonal cell with the most mistakes: the pair worth looking at
    first. The first such cell when there are ties, (0, 1) when there are no mistakes."""
    off = np.asarray(confusion).copy()
    np.fill_diagonal(off, -1)
    true, predicted = np.unravel_index(int(off.argmax()), off.shape)
    return int(true), int(predicted)


def cell_from_table_state(state: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The (true, predicted) cell picked on the confusion-matrix table, from the table's
    selection state ({"selection": {"cells": [[true row, "predicted column"], ...]}}); None when
    nothing usable is selected."""
    selection = (state or {}).get("selection") or {}
    for cell in selection.get("cells") or []:
        if not isinstance(cell, (list, tuple)) or len(cell) != 2:
            continue
        row, column = cell
        predicted = int(column) if isinstance(column, str) and column in DIGIT_NAMES else None
        if is_digit_coordinate(row) and predicted is not None:
            return int(row), predicted
    return None


DIGIT_NAMES = tuple(str(d) for d in range(10))


def is_digit_coordinate(value: Any) -> bool:
    """A whole number 0..9 (possibly sent as a float by the browser), not a bool or a string."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and float(value).is_integer() and 0 <= value <= 9
    )


@dataclass
class Example:
    """One test image as the galleries show it."""

    index: int  # into the test set
    true: int
    predicted: int
    top3: list[tuple[int, float]]  # the three most probable digits and their probabilities

    @property
    def headline(self) -> str:
        """'true 4 → said 9' for a mistake, 'true 4' for a correct prediction."""
        return f"true {self.true}" + ("" if self.true == self.predicted else f" → said {self.predicted}")

    @property
    def top3_text(self) -> str:
        """'9: 91% · 4: 8% · 7: 1%', each pair joined by a no-break space so it never wraps apart."""
        return " · ".join(f"{digit}:\u00a0{p:.0%}" for digit, p in self.top3)


def cell_examples(
    evaluation: Evaluation, labels: np.ndarray, true: int, predicted: int, limit: int
) -> list[Example]:
    """Test images in one confusion-matrix cell. Off the diagonal: the mistakes, most confident
    first. On it: the correct ones the model was least sure of (its closest calls)."""
    labels = np.asarray(labels)
    if true != predicted:
        indices = evaluation.misclassified(labels, true=true, predicted=predicted)
    else:
        indices = np.flatnonzero((labels == true) & (evaluation.predictions == true))
        indices = indices[np.argsort(evaluation.probabilities[indices, true], kind="stable")]
    return [example(evaluation, labels, int(i)) for i in indices[:limit]]


def confident_mistakes(evaluation: Evaluation, labels: np.ndarray, limit: int) -> list[Example]:
    """All wrong predictions, the most confident first: where the model is surely wrong."""
    return [example(evaluation, labels, int(i)) for i in evaluation.misclassified(np.asarray(labels))[:limit]]


def example(evaluation: Evaluation, labels: np.ndarray, index: int) -> Example:
    return Example(index, int(labels[index]), int(evaluation.predictions[index]), evaluation.top_k(index, 3))


def enlarge(image: np.ndarray | torch.Tensor, factor: int = 4) -> np.ndarray:
    """A 28x28 image (uint8 or floats in [0, 1]) as uint8, each pixel a factor x factor block,
    so browsers show crisp pixels instead of blurring a tiny image up."""
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.kron(array, np.ones((factor, factor), dtype=np.uint8))


@dataclass
class Prediction:
    digit: int
    probabilities: np.ndarray  # 10
    model_input: np.ndarray  # the 28x28 image in [0, 1] the model saw


@torch.inference_mode()
def predict_image(model: Classifier, gray: np.ndarray) -> Prediction | None:
    """Preprocess an ink-bright grayscale image MNIST-style and classify it; None if blank."""
    image = mnist_style(gray)
    if image is None:
        return None
    probs = torch.softmax(model.eval()(normalise(image)), dim=1)[0].numpy()
    return Prediction(int(probs.argmax()), probs, image)


def strokes_to_gray(strokes: Sequence[Sequence[Sequence[float]]]) -> np.ndarray | None:
    """Strokes drawn on the canvas -> float32 ink image in [0, 1]; None when there are none.

    Each stroke is a list of (x, y) points in canvas units (0..1 across the canvas, whatever its
    size on screen); one point is a dot. The pen width scales with the drawing (see PEN), so a
    small digit is not a blob and a large one is not a hairline once MNIST-style scaled.
    Raises ValueError for anything that is not such a list.
    """
    if not isinstance(strokes, (list, tuple)) or len(strokes) > MAX_STROKES:
        raise ValueError(f"expected a list of at most {MAX_STROKES} strokes.")
    lines: list[np.ndarray] = []
    for stroke in strokes:
        if isinstance(stroke, (list, tuple)) and sum(len(line) for line in lines) + len(stroke) > MAX_POINTS:
            raise ValueError(f"the drawing has more than {MAX_POINTS} points.")
        try:
            points = np.asarray(stroke, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError("each stroke must be a list of (x, y) number pairs.") from err
        if points.size == 0:
            continue
        if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
            raise ValueError("each stroke must be a list of (x, y) number pairs.")
        lines.append(np.clip(points, 0.0, 1.0))
    if not lines:
        return None
    everything = np.concatenate(lines)
    low = everything.min(axis=0)
    extent = max(float((everything.max(axis=0) - low).max()), MIN_EXTENT)
    scale = RENDER_SIDE / extent
    pen = max(1, round(PEN * RENDER_SIDE))
    margin = pen  # room for the pen's half width on every side, and then some
    size = np.ceil((everything.max(axis=0) - low) * scale).astype(int) + 2 * margin + 1
    image = Image.new("L", (int(size[0]), int(size[1])), 0)
    draw = ImageDraw.Draw(image)
    radius = pen / 2
    for points in lines:
        xy = [(float(x), float(y)) for x, y in (points - low) * scale + margin]
        if len(xy) > 1:
            draw.line(xy, fill=255, width=pen, joint="curve")
        for x, y in (xy[0], xy[-1]) if len(xy) > 1 else xy:  # round ends, and dots
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return np.asarray(image, dtype=np.float32) / 255.0


def predict_strokes(model: Classifier, strokes: Sequence[Sequence[Sequence[float]]]) -> Prediction | None:
    """Classify strokes drawn on the canvas (see strokes_to_gray); None while there are none."""
    gray = strokes_to_gray(strokes)
    return None if gray is None else predict_image(model, gray)


def predict_upload(model: Classifier, data: bytes) -> Prediction | None:
    """Classify an uploaded picture; None if it holds no ink. Raises ImageError for a file that
    is not a readable image."""
    return predict_image(model, load_uploaded_image(data))
