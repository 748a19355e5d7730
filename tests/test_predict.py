"""Finished runs are found, ranked and loaded; their stored results are reused without a forward
pass; drawings and uploads are read by a model whose weights are set by hand, so no training."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from mnist_core.engine.data import MEAN, STD, Mnist
from mnist_core.engine.evaluate import confusion_counts, evaluate, evaluation_from_probabilities, per_class_scores
from mnist_core.engine.models import Classifier, build_cnn_best_2026_11, build_model
from mnist_core.engine.predict import (
    cell_examples,
    cell_from_table_state,
    class_table,
    confident_mistakes,
    enlarge,
    most_confused,
    predict_image,
    predict_upload,
)
from mnist_core.service.results import (
    default_run_index,
    finished_runs,
    load_evaluation,
    load_run_model,
    run_label,
)
from mnist_core.engine.preprocess import ImageError, canvas_to_gray, mnist_style
from mnist_core.service.store import RunStore, RunStoreError


def stroke_picture(shape: str, size: int = 200, ink: int = 255, paper: int = 0) -> Image.Image:
    """A thick '1' (a vertical bar) or '0' (an ellipse), like a drawing or a photo of one."""
    image = Image.new("L", (size, size), paper)
    pen = ImageDraw.Draw(image)
    if shape == "bar":
        pen.line([(size // 2, size // 5), (size // 2, 4 * size // 5)], fill=ink, width=size // 12)
    else:
        pen.ellipse([size // 4, size // 6, 3 * size // 4, 5 * size // 6], outline=ink, width=size // 12)
    return image


def template_model() -> Classifier:
    """A linear model that scores a '1' by overlap with a bar and a '0' by overlap with a ring
    (templates made MNIST-style); the other digits score 0. The bias cancels the normalisation,
    so each score is the plain dot product of the [0, 1] input with a unit-length template."""
    model = build_model("linear")
    weight = torch.zeros(10, 784)
    for digit, shape in ((0, "ring"), (1, "bar")):
        template = torch.from_numpy(mnist_style(np.asarray(stroke_picture(shape), np.float32) / 255)).flatten()
        weight[digit] = 10 * template / template.norm()
    with torch.no_grad():
        model.head.weight.copy_(weight * STD)
        model.head.bias.copy_((weight * STD).sum(1) * MEAN / STD)
    return model.eval()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_mnist(count: int = 30, seed: int = 0) -> Mnist:
    """Random images and labels standing in for the test set; only shapes matter here."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % 10
    return Mnist(images, labels, images, labels, source="test", folder=Path("."))


def add_finished(store: RunStore, run_id: str, accuracy: float | None, weights: bool = True) -> None:
    store.create_run(run_id, {"model": "linear"}, status="finished")
    store.update_run(run_id, test_accuracy=accuracy)
    if weights:
        store.save_weights(run_id, build_model("linear").state_dict())


def probabilities_for(predictions: list[int], confidences: list[float]) -> np.ndarray:
    """Rows whose argmax is `predictions[i]` with probability `confidences[i]`."""
    rows = []
    for predicted, confidence in zip(predictions, confidences):
        row = np.full(10, (1 - confidence) / 9)
        row[predicted] = confidence
        rows.append(row)
    return np.array(rows)


# -- finding and loading runs ----------------------------------------------------------------


def test_finished_runs_best_first_only_usable(store: RunStore) -> None:
    add_finished(store, "low", 0.90)
    add_finished(store, "unknown", None)
    add_finished(store, "high", 0.99)
    add_finished(store, "middle", 0.95)
    add_finished(store, "no-weights", 0.999, weights=False)
    store.create_run("queued", {"model": "linear"})
    store.create_run("failed", {"model": "linear"}, status="failed")
    assert [r.id for r in finished_runs(store)] == ["high", "middle", "low", "unknown"]


def test_finished_runs_ties_newest_first(store: RunStore) -> None:
    add_finished(store, "older", 0.95)
    add_finished(store, "newer", 0.95)
    assert [r.id for r in finished_runs(store)] == ["newer", "older"]


def test_run_label_and_default_index(store: RunStore) -> None:
    add_finished(store, "best", 0.98765)
    add_finished(store, "other", None)
    runs = finished_runs(store)
    assert run_label(runs[0]) == "linear · 98.77% · best"
    assert "accuracy unknown" in run_label(runs[1])
    assert default_run_index(runs, "other") == 1
    assert default_run_index(runs, None) == 0
    assert default_run_index(runs, "deleted-meanwhile") == 0


def test_load_run_model_restores_weights(store: RunStore) -> None:
    model = template_model()
    store.create_run("templates", {"model": "linear", "dropout": 0.0}, status="finished")
    store.save_weights("templates", model.state_dict())
    loaded = load_run_model(store, "templates")
    x = torch.randn(3, 1, 28, 28)
    assert not loaded.training
    assert torch.equal(loaded(x), model(x))


def test_load_run_model_errors_name_the_problem(store: RunStore) -> None:
    with pytest.raises(RunStoreError, match="no run"):
        load_run_model(store, "missing")
    store.create_run("cancelled", {"model": "linear"}, status="cancelled")
    with pytest.raises(RunStoreError, match="no weights"):
        load_run_model(store, "cancelled")


def test_a_run_stored_with_an_earlier_version_of_its_model_still_loads(store: RunStore) -> None:
    """cnn-best changed on 2026-11-29; its runs from before keep their layers and predictions."""
    torch.manual_seed(0)
    old = build_cnn_best_2026_11(0.25).eval()
    store.create_run("old-best", {"model": "cnn-best", "dropout": 0.25}, status="finished")
    store.save_weights("old-best", old.state_dict())
    new = build_model("cnn-best", 0.25).eval()
    store.create_run("new-best", {"model": "cnn-best", "dropout": 0.25}, status="finished")
    store.save_weights("new-best", new.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_run_model(store, "old-best")(x), old(x))
        assert torch.equal(load_run_model(store, "new-best")(x), new(x))
    assert load_run_model(store, "old-best").features[0].out_channels == 32
    assert load_run_model(store, "new-best").features[0].out_channels == 16


def test_weights_that_fit_no_version_of_the_model_are_refused_by_name(store: RunStore) -> None:
    store.create_run("mixed-up", {"model": "cnn-best"}, status="finished")
    store.save_weights("mixed-up", build_model("cnn-small").state_dict())
    with pytest.raises(RunStoreError, match="mixed-up: the stored weights do not fit any version of the model"):
        load_run_model(store, "mixed-up")


def test_load_evaluation_uses_stored_probabilities_without_weights(store: RunStore) -> None:
    data = tiny_mnist()
    stored = np.random.default_rng(0).dirichlet(np.ones(10), size=len(data.test_labels))
    store.create_run("stored", {"model": "linear"}, status="finished")  # no weights: no forward pass possible
    store.save_tensors("stored", "evaluation", {"probabilities": torch.from_numpy(stored.astype(np.float32))})
    evaluation = load_evaluation(store, "stored", data)
    assert np.array_equal(evaluation.predictions, stored.argmax(1))
    assert evaluation.confusion.sum() == len(data.test_labels)


@pytest.mark.parametrize("stored", [None, torch.full((5, 10), 0.1), torch.full((30, 10), 0.1)])
def test_load_evaluation_recomputes_missing_or_unusable_results(store: RunStore, stored: torch.Tensor | None) -> None:
    data = tiny_mnist()
    model = template_model()
    store.create_run("run", {"model": "linear"}, status="finished")
    store.save_weights("run", model.state_dict())
    if stored is not None and len(stored) == 5:  # the wrong number of rows for this test set
        store.save_tensors("run", "evaluation", {"probabilities": stored})
    elif stored is not None:  # the right shape under the wrong name
        store.save_tensors("run", "evaluation", {"probs": stored})
    expected = evaluate(model, data.test_images, data.test_labels)
    evaluation = load_evaluation(store, "run", data)
    assert np.allclose(evaluation.probabilities, expected.probabilities)
    assert evaluation.accuracy == expected.accuracy


# -- what the Evaluate page shows -------------------------------------------------------------


LABELS = np.array([4, 4, 4, 9, 9, 3, 3, 7])
EVALUATION = evaluation_from_probabilities(
    probabilities_for([9, 9, 4, 4, 9, 3, 3, 1], [0.6, 0.95, 0.8, 0.7, 0.9, 0.55, 0.99, 0.5]), LABELS
)


def test_class_table_matches_the_evaluation() -> None:
    table = class_table(EVALUATION)
    assert list(table.columns) == ["digit", "precision", "recall", "F1", "support"]
    assert table["digit"].tolist() == list(range(10))
    assert table["support"].tolist() == np.bincount(LABELS, minlength=10).tolist()
    assert table.loc[4, "recall"] == pytest.approx(1 / 3)
    assert table.loc[9, "precision"] == pytest.approx(1 / 3)


def test_most_confused_is_the_largest_off_diagonal_cell() -> None:
    assert most_confused(EVALUATION.confusion) == (4, 9)
    assert most_confused(np.eye(10, dtype=int) * 1000) == (0, 1)  # no mistakes: a harmless default


def test_cell_examples_off_diagonal_most_confident_mistakes_first() -> None:
    examples = cell_examples(EVALUATION, LABELS, true=4, predicted=9, limit=10)
    assert [e.index for e in examples] == [1, 0]
    assert all((e.true, e.predicted) == (4, 9) for e in examples)
    assert cell_examples(EVALUATION, LABELS, true=4, predicted=9, limit=1)[0].index == 1
    assert cell_examples(EVALUATION, LABELS, true=0, predicted=1, limit=10) == []


def test_cell_examples_on_diagonal_closest_calls_first() -> None:
    assert [e.index for e in cell_examples(EVALUATION, LABELS, true=3, predicted=3, limit=10)] == [5, 6]


def test_confident_mistakes_and_their_captions() -> None:
    mistakes = confident_mistakes(EVALUATION, LABELS, limit=3)
    assert [m.index for m in mistakes] == [1, 3, 0]
    first = mistakes[0]
    assert first.headline == "true 4 → said 9"
    assert first.top3[0] == (9, pytest.approx(0.95))
    assert first.top3_text.startswith("9:\u00a095% · ") and first.top3_text.count(" · ") == 2
    assert cell_examples(EVALUATION, LABELS, 3, 3, 1)[0].headline == "true 3"


@pytest.mark.parametrize(
    ("state", "cell"),
    [
        ({"selection": {"rows": [], "columns": [], "cells": [[4, "9"]]}}, (4, 9)),
        ({"selection": {"cells": [(7.0, "2")]}}, (7, 2)),
        ({"selection": {"cells": [[1, "a"], [1, "12"], [12, "1"], [0, "0"]]}}, (0, 0)),
        ({"selection": {"cells": [[True, "1"], [1.5, "1"], [3], "3,4", [2, 3]]}}, None),
        ({"selection": {"rows": [], "columns": [], "cells": []}}, None),
        ({}, None),
        (None, None),
    ],
)
def test_cell_from_table_state(state: dict | None, cell: tuple[int, int] | None) -> None:
    """Only a whole row number 0-9 and a column named "0"-"9" pick a cell: anything else the
    browser sends is ignored."""
    assert cell_from_table_state(state) == cell


def test_enlarge_gives_crisp_uint8_blocks() -> None:
    image = np.zeros((28, 28), np.float32)
    image[0, 0], image[27, 27] = 1.0, 0.5
    big = enlarge(image, 3)
    assert big.dtype == np.uint8 and big.shape == (84, 84)
    assert (big[:3, :3] == 255).all() and big[3, 3] == 0 and (big[-3:, -3:] == 128).all()
    raw = torch.arange(784, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(28, 28)
    assert np.array_equal(enlarge(raw, 1), raw.numpy())


# -- reading drawn and uploaded digits ---------------------------------------------------------


def canvas_rgba(shape: str) -> np.ndarray:
    """What the Draw page's canvas returns: white strokes on opaque black, 280x280 RGBA."""
    return np.asarray(stroke_picture(shape, size=280).convert("RGBA"))


def test_a_drawing_is_read() -> None:
    model = template_model()
    for shape, digit in (("bar", 1), ("ring", 0)):
        prediction = predict_image(model, canvas_to_gray(canvas_rgba(shape)))
        assert prediction is not None and prediction.digit == digit
        assert prediction.probabilities.shape == (10,)
        assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert prediction.model_input.shape == (28, 28)
        assert 0.0 <= prediction.model_input.min() and prediction.model_input.max() == pytest.approx(1.0)


def test_blank_drawing_is_no_prediction() -> None:
    model = template_model()
    blank = np.zeros((280, 280, 4), np.uint8)
    blank[:, :, 3] = 255
    assert predict_image(model, canvas_to_gray(blank)) is None
    assert predict_image(model, np.zeros((50, 50), np.float32)) is None


def test_predict_upload_reads_dark_ink_on_paper() -> None:
    model = template_model()
    photo = stroke_picture("ring", size=360, ink=30, paper=230).convert("RGB")
    prediction = predict_upload(model, png_bytes(photo))
    assert prediction is not None and prediction.digit == 0
    assert predict_upload(model, png_bytes(Image.new("L", (64, 64), 200))) is None


@pytest.mark.parametrize("data", [b"", b"definitely not an image", png_bytes(Image.new("L", (8, 8)))[:20]])
def test_predict_upload_rejects_unreadable_files(data: bytes) -> None:
    with pytest.raises(ImageError):
        predict_upload(template_model(), data)


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=200))
def test_confusion_and_scores_match_scikit_learn(pairs) -> None:
    """The hand-rolled metrics (kept to spare a training process sklearn's import) agree with
    scikit-learn's on any labels and predictions, missing classes included."""
    labels, preds = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    confusion = confusion_counts(labels, preds)
    assert np.array_equal(confusion, confusion_matrix(labels, preds, labels=list(range(10))))
    ours = per_class_scores(confusion)
    theirs = precision_recall_fscore_support(labels, preds, labels=list(range(10)), zero_division=0)[:3]
    for mine, reference in zip(ours, theirs):
        assert np.allclose(mine, reference)
