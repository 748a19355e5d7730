"""The Evaluate and Draw pages, driven through the real app with AppTest, on a run trained here
(one epoch of the linear model on real MNIST, a few seconds) in the store the pages open."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from mnist_core.engine.config import TrainConfig
from mnist_core.service.lifecycle import run_id_for
from mnist_core.service.results import finished_runs, load_evaluation, load_run_model
from mnist_core.engine.predict import most_confused, predict_upload
from mnist_core.engine.preprocess import ImageError
from mnist_core.service.store import RunStore
from tests.synthetic import train_here

EVALUATE, DRAW = "pages/evaluate.py", "pages/draw.py"
WEAKER = "linear-weaker-copy"


@pytest.fixture(scope="module")
def runs(mnist) -> Iterator[tuple[str, str]]:
    """(best run, weaker run) in the store of MNIST_RUNS_DIR, which the pages open too. The
    weaker one is the same model with a lower accuracy written in, to test which is preselected.
    The best is the store's most accurate finished run: this module's linear run, unless a
    module run before it in the same process left a better one (the pages share one store)."""
    store = RunStore()
    # Large batches keep it to 60 steps: seconds even on a busy CPU, and about 91% accurate.
    config = TrainConfig(model="linear", epochs=1, batch_size=1000, lr=0.01, device="cpu", val_split=0.0)
    run_id = run_id_for(config)
    assert train_here(store, config, mnist) == "finished"
    if store.get_run(WEAKER) is None:
        store.create_run(WEAKER, config.to_dict(), status="finished")
        store.save_weights(WEAKER, store.load_weights(run_id))
        store.update_run(WEAKER, test_accuracy=0.5)  # its stored evaluation is missing: recomputed
    finished = [r for r in store.list_runs(("finished",)) if r.test_accuracy is not None]
    best = max(finished, key=lambda r: r.test_accuracy)
    assert best.id != WEAKER and best.test_accuracy >= store.get_run(run_id).test_accuracy
    yield best.id, WEAKER


def open_page(page: str, query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=60)
    if query:
        at.query_params.update(query)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def widget(elements, label: str):
    matches = [e for e in elements if e.label == label]
    assert len(matches) == 1, f"expected one widget labelled {label!r}, got {[e.label for e in elements]}"
    return matches[0]


def cell_text(at: AppTest) -> str:
    return " ".join(m.value for m in at.markdown if "test images of a" in m.value)


# -- Evaluate ---------------------------------------------------------------------------------


def test_evaluate_shows_metrics_matrix_and_table(runs, mnist) -> None:
    best, _ = runs
    at = open_page(EVALUATE)
    run_box = widget(at.selectbox, "Run")
    assert run_box.value == best  # best accuracy first
    evaluation = load_evaluation(RunStore(), best, mnist)  # on the 10,000 test images, as the page shows
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Test accuracy"] == f"{evaluation.accuracy:.2%}"
    assert float(metrics["Test loss"]) == pytest.approx(evaluation.loss, abs=1e-4)
    assert not at.get("plotly_chart")  # the confusion matrix is a table: a click redraws no chart
    matrix, table = (frame.value for frame in at.dataframe)
    np.testing.assert_array_equal(matrix.to_numpy(), evaluation.confusion)
    assert matrix.index.tolist() == matrix.columns.tolist() == [str(d) for d in range(10)]
    assert table["digit"].tolist() == list(range(10))
    assert table["support"].sum() == len(mnist.test_labels)
    assert at.query_params["run"] == best  # the address now names the run, for sharing


def test_evaluate_cell_pickers_show_that_cells_images(runs, mnist) -> None:
    best, _ = runs
    evaluation = load_evaluation(RunStore(), best, mnist)
    labels = mnist.test_labels.numpy()
    at = open_page(EVALUATE)
    true, predicted = most_confused(evaluation.confusion)  # preselected: the pair most mixed up
    assert (widget(at.selectbox, "True digit").value, widget(at.selectbox, "Predicted digit").value) == (true, predicted)

    confusion = evaluation.confusion.copy()
    np.fill_diagonal(confusion, 0)
    confusion[true, predicted] = 0
    other_true, other_predicted = np.unravel_index(int(confusion.argmax()), confusion.shape)
    count = int(evaluation.confusion[other_true, other_predicted])
    widget(at.selectbox, "True digit").set_value(int(other_true))
    widget(at.selectbox, "Predicted digit").set_value(int(other_predicted)).run()
    assert not at.exception
    assert f"{count:,} test images of a **{other_true}** were taken for a **{other_predicted}**" in cell_text(at)
    mistakes_shown = widget(at.slider, "How many to show").value
    assert len(at.image) == min(count, 12) + mistakes_shown  # 3 rows of 4 beside the matrix
    wrong = int((evaluation.predictions != labels).sum())
    assert {m.label: m.value for m in at.metric}["Mistakes"] == f"{wrong:,} of {len(labels):,}"
    first_caption = next(c.value for c in at.caption if c.value.startswith("**true"))
    assert first_caption.startswith(f"**true {other_true} → said {other_predicted}**")

    empty = np.argwhere(evaluation.confusion == 0)
    if len(empty):
        widget(at.selectbox, "True digit").set_value(int(empty[0][0]))
        widget(at.selectbox, "Predicted digit").set_value(int(empty[0][1])).run()
        assert any("Pick another cell" in i.value for i in at.info)


def test_evaluate_preselects_the_run_in_the_address(runs) -> None:
    _, weaker = runs
    at = open_page(EVALUATE, {"run": weaker})
    assert widget(at.selectbox, "Run").value == weaker
    assert {m.label: m.value for m in at.metric}["Test accuracy"].endswith("%")  # recomputed from weights


def test_evaluate_ignores_an_unknown_run_in_the_address(runs) -> None:
    best, _ = runs
    at = open_page(EVALUATE, {"run": "../../etc/passwd"})
    assert widget(at.selectbox, "Run").value == best


# -- Draw -------------------------------------------------------------------------------------


def digit_photo(mnist, index: int) -> bytes:
    """A test digit as a user might photograph it: dark ink on light paper, 4x larger, PNG."""
    image = Image.fromarray(255 - mnist.test_images[index].numpy()).resize((112, 112), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def well_read_index(mnist, run_id: str) -> int:
    """A test image the run gets right with high confidence, so its photo must be read too."""
    evaluation = load_evaluation(RunStore(), run_id, mnist)
    labels = mnist.test_labels.numpy()
    confident = (evaluation.predictions == labels) & (evaluation.probabilities.max(1) > 0.99)
    return int(np.flatnonzero(confident)[0])


def test_draw_page_starts_with_a_hint_and_the_best_model(runs) -> None:
    best, _ = runs
    at = open_page(DRAW)
    assert widget(at.selectbox, "Model that reads your digit").value == best
    assert any(i.value.startswith("Draw a digit") for i in at.info)
    assert not any(s.value.startswith("Prediction:") for s in at.subheader)
    assert "drawn_digit" not in at.session_state
    assert len(at.get("bidi_component")) == 1  # the drawing canvas (its Undo and Clear are in it)


def test_draw_page_reads_an_uploaded_photo(runs, mnist) -> None:
    best, _ = runs
    index = well_read_index(mnist, best)
    label = int(mnist.test_labels[index])
    at = open_page(DRAW)
    at.radio[0].set_value("Upload a picture").run()
    at.file_uploader[0].set_value(("digit.png", digit_photo(mnist, index), "image/png")).run()
    assert not at.exception and not at.error
    assert [s.value for s in at.subheader if s.value.startswith("Prediction:")] == [f"Prediction: {label}"]
    drawn = at.session_state["drawn_digit"]
    assert drawn.shape == (28, 28) and drawn.dtype == np.float32
    assert 0.0 <= drawn.min() and drawn.max() <= 1.0
    assert len(at.get("plotly_chart")) == 1


def test_draw_page_explains_an_unreadable_upload(runs) -> None:
    at = open_page(DRAW)
    at.radio[0].set_value("Upload a picture").run()
    at.file_uploader[0].set_value(("digit.png", b"this is not a png", "image/png")).run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "Could not read digit\\.png" in errors  # the visitor's file name, escaped: shown as typed
    assert " at 0x" not in errors and "BytesIO" not in errors
    assert not any(s.value.startswith("Prediction:") for s in at.subheader)


def test_prediction_path_matches_the_model(runs, mnist) -> None:
    """The page's upload path in core: a photo of a test digit is read as the model reads the
    test image itself; garbage is an ImageError, not a crash."""
    best, _ = runs
    model = load_run_model(RunStore(), best)
    index = well_read_index(mnist, best)
    prediction = predict_upload(model, digit_photo(mnist, index))
    assert prediction is not None and prediction.digit == int(mnist.test_labels[index])
    assert prediction.probabilities.argmax() == prediction.digit
    with pytest.raises(ImageError, match="not a readable image"):
        predict_upload(model, b"GIF89a broken")


# -- no trained model yet ---------------------------------------------------------------------


@pytest.fixture
def empty_store(tmp_path, monkeypatch) -> Iterator[None]:
    """Point the pages at an empty run store, then back (the store is a process-wide resource)."""
    from pages.common import get_store

    monkeypatch.setenv("MNIST_RUNS_DIR", str(tmp_path / "empty-runs"))
    get_store.clear()
    yield
    monkeypatch.undo()
    get_store.clear()


@pytest.mark.parametrize("page", [EVALUATE, DRAW])
def test_pages_without_finished_runs_link_to_train(mnist, empty_store, page: str) -> None:
    at = open_page(page)
    assert finished_runs(RunStore()) == []
    assert any("Train" in i.value for i in at.info)
    assert [link.proto.page for link in at.page_link] == ["train"]
    assert not at.selectbox
