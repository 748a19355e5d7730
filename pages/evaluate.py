"""Evaluate: how a finished run does on the 10,000 test images, and where it goes wrong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
import torch
from pandas.io.formats.style import Styler

from mnist_core.teach import pictures
from mnist_core.engine.evaluate import Evaluation
from mnist_core.teach.glossary import notes
from mnist_core.engine.predict import (
    Example,
    cell_examples,
    cell_from_table_state,
    class_table,
    confident_mistakes,
    enlarge,
    most_confused,
)
from mnist_core.service.results import default_run_index, load_evaluation, run_label
from mnist_core.teach.text import report
from pages.common import get_store, help_text, load_data, require_data, require_finished_runs

DIGITS = list(range(10))
PER_ROW = 8
CELL_PER_ROW, CELL_ROWS = 4, 3  # the chosen cell's images, in the half page beside the matrix
MATRIX_COLUMN_PX = 42  # the row labels and ten columns, all this wide, fit beside the cell's images


@st.cache_data(max_entries=8, show_spinner="Loading the run's test-set results…")
def cached_evaluation(run_id: str, finished: float | None) -> Evaluation:
    """Keyed by id and finish time too, so a run trained again is not served stale results."""
    data = load_data()
    assert data is not None, "require_data() ran first"
    return load_evaluation(get_store(), run_id, data)


def confusion_table(confusion: np.ndarray, cell: tuple[int, int]) -> Styler:
    """The confusion matrix as a table of counts (rows: true digit, columns: predicted digit),
    shaded on a log scale so that mistakes (tens) show next to the diagonal (about a thousand);
    the chosen cell is orange. A table, not a Plotly heatmap: a click on a cell redraws a
    canvas instead of an SVG chart, which took 0.3-0.4 s per click in the browser here."""
    frame = pd.DataFrame(confusion, index=[str(d) for d in DIGITS], columns=[str(d) for d in DIGITS])
    colours = pictures.paint(pictures.log_shares(confusion), "blues", 0, 1)  # as on Mean images
    styles = np.empty(confusion.shape, dtype=object)
    for true, predicted in np.ndindex(confusion.shape):
        rgb = colours[true, predicted]
        styles[true, predicted] = f"background-color: {pictures.hex_colour(rgb)}; color: {pictures.ink_for(rgb)}"
    styles[cell] = "background-color: #e8590c; color: white; font-weight: bold"
    return frame.style.apply(lambda _: styles, axis=None)


def gallery(examples: list[Example], images: torch.Tensor, per_row: int = PER_ROW) -> None:
    """Test images in rows of `per_row`, each with its verdict and top-3 probabilities."""
    for start in range(0, len(examples), per_row):
        for column, item in zip(st.columns(per_row), examples[start : start + per_row]):
            with column:
                st.image(enlarge(images[item.index], 3), width=84)
                st.caption(f"**{item.headline}**  \n{item.top3_text}  \ntest image #{item.index}")


@st.fragment
def matrix_and_cell(evaluation: Evaluation, labels: np.ndarray, test_images: torch.Tensor, run_id: str) -> None:
    """The confusion matrix, the per-digit table and the images of the chosen cell. A fragment:
    a click on a cell reruns only this part of the page, not the whole page."""
    # The cell to inspect: a click on the table sets the two selectboxes below, which also work alone.
    true_key, predicted_key = f"eval_true_{run_id}", f"eval_predicted_{run_id}"
    applied_key, table_key = f"eval_click_{run_id}", f"eval_confusion_{run_id}"
    if true_key not in st.session_state:
        st.session_state[true_key], st.session_state[predicted_key] = most_confused(evaluation.confusion)
    clicked = cell_from_table_state(st.session_state.get(table_key))
    if clicked != st.session_state.get(applied_key):  # apply a new click once; keep later manual picks
        st.session_state[applied_key] = clicked
        if clicked is not None:
            st.session_state[true_key], st.session_state[predicted_key] = clicked

    matrix_col, cell_col = st.columns([5, 4], gap="large")
    with matrix_col:
        st.subheader("Confusion matrix", help=help_text("confusion_matrix"))
        st.caption("Each row is a true digit, each column the digit the model predicted: the row 4, "
                   "column 9 cell counts the 4s taken for 9s. Click a cell to see its images.")
        st.dataframe(
            confusion_table(evaluation.confusion, (st.session_state[true_key], st.session_state[predicted_key])),
            key=table_key, on_select="rerun", selection_mode="single-cell", height=35 * 11 + 3, width="content",
            # Every column, the row labels too, equally wide: eleven columns of one width.
            column_config={"_index": st.column_config.TextColumn(width=MATRIX_COLUMN_PX),
                           **{str(d): st.column_config.NumberColumn(str(d), width=MATRIX_COLUMN_PX) for d in DIGITS}},
        )
        with st.expander("Why? How to read a confusion matrix"):
            st.write(help_text("confusion_matrix"))
            st.write("Colours use a logarithmic scale, so that a cell with 5 mistakes is visible next "
                     "to a diagonal cell with 1,000 correct answers.")
    with cell_col:  # beside the matrix: a click shows its images without scrolling
        st.subheader("Look inside one cell")
        true_col, predicted_col = st.columns(2)
        true_digit = true_col.selectbox("True digit", DIGITS, key=true_key,
                                        help="The row of the confusion matrix: what the image really shows.")
        predicted_digit = predicted_col.selectbox("Predicted digit", DIGITS, key=predicted_key,
                                                  help="The column: what the model said.")
        count = int(evaluation.confusion[true_digit, predicted_digit])
        shown = cell_examples(evaluation, labels, true_digit, predicted_digit, limit=CELL_ROWS * CELL_PER_ROW)
        if true_digit == predicted_digit:
            st.markdown(f"{count:,} test images of a **{true_digit}** were classified correctly. "
                        "Shown: the ones the model was least sure of.")
        else:
            st.markdown(f"{count:,} test images of a **{true_digit}** were taken for a "
                        f"**{predicted_digit}**. Shown: the most confident mistakes first.")
        if shown:
            gallery(shown, test_images, per_row=CELL_PER_ROW)
        else:
            st.info(f"No test image of a {true_digit} was predicted as {predicted_digit}. Pick another cell.")


def per_digit_scores(evaluation: Evaluation) -> None:
    """Precision, recall and F1 per digit: outside the fragment, since a click changes none of it."""
    st.subheader("Per-digit scores", help=help_text("precision_recall"))
    st.dataframe(
        class_table(evaluation), hide_index=True,
        column_config={
            "digit": st.column_config.NumberColumn("digit", width="small"),
            "precision": st.column_config.ProgressColumn(
                "precision", format="%.3f", min_value=0.0, max_value=1.0, width="small",
                help="Of the images predicted as this digit, the fraction that really are."),
            "recall": st.column_config.ProgressColumn(
                "recall", format="%.3f", min_value=0.0, max_value=1.0, width="small",
                help="Of the images that really are this digit, the fraction found."),
            "F1": st.column_config.NumberColumn(
                "F1", format="%.3f", width="small", help="Harmonic mean of precision and recall."),
            "support": st.column_config.NumberColumn(
                "support", width="small", help="How many test images show this digit."),
        },
    )
    with st.expander("Why? Precision, recall and F1"):
        st.write(help_text("precision_recall"))


data = require_data()
st.title("Evaluate a model")
st.write(
    "How well does a trained model do on the 10,000 test images it never saw during training, "
    "and which digits does it mix up? Pick a finished run, then click a cell of the confusion "
    "matrix to see the images behind it."
)

store = get_store()
runs = require_finished_runs("Train one first (one epoch of `linear` takes seconds), then come back here.",
                             scope_key="evaluate_scope")

by_id = {r.id: r for r in runs}
run_id = st.selectbox(
    "Run", list(by_id), index=default_run_index(runs, st.query_params.get("run")),
    format_func=lambda rid: run_label(by_id[rid]),
    help="Finished runs, best test accuracy first. The page's address remembers your choice, "
         "so you can share a link to this run.",
)
st.query_params["run"] = run_id
record = by_id[run_id]
settings = record.config
summary = (
    f"{settings.get('model')} · {settings.get('epochs')} epoch(s) · {settings.get('optimizer')} "
    f"lr {settings.get('lr')} · batch {settings.get('batch_size')}"
    + (f" · trained on {record.device}" if record.device else "")
    + (f" in {record.duration_s:.0f} s" if record.duration_s is not None else "")
)
st.caption(summary, help=notes(summary) or None)

try:
    evaluation = cached_evaluation(run_id, record.finished)
except Exception as err:  # a damaged or foreign tensor file: say so instead of a traceback
    st.error(report(f"Could not load the results of run {run_id}", err))
    st.stop()
labels = data.test_labels.numpy()
wrong = int((evaluation.predictions != labels).sum())

accuracy_col, loss_col, wrong_col = st.columns(3)
accuracy_col.metric("Test accuracy", f"{evaluation.accuracy:.2%}",
                    help="The fraction of the 10,000 test images classified correctly.")
loss_col.metric("Test loss", f"{evaluation.loss:.4f}", help=help_text("loss_vs_metric"))
wrong_col.metric("Mistakes", f"{wrong:,} of {len(labels):,}",
                 help="Test images whose most probable digit is not the true one.")

matrix_and_cell(evaluation, labels, data.test_images, run_id)
per_digit_scores(evaluation)

st.subheader("The most confident mistakes")
st.write("Wrong answers the model was surest about. Some are the model's fault; some test "
         "images are ambiguous or even mislabelled.")
how_many = st.slider("How many to show", min_value=PER_ROW, max_value=8 * PER_ROW, value=2 * PER_ROW,
                     step=PER_ROW,
                     help="Mistakes are sorted by the probability the model gave its wrong answer.")
mistakes = confident_mistakes(evaluation, labels, how_many)
if mistakes:
    gallery(mistakes, data.test_images)
else:
    st.success("This model makes no mistakes on the test set.")
