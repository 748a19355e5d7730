"""Draw: write a digit (or upload a picture of one) and watch a trained model read it."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from streamlit_drawable_canvas import st_canvas

from mnist_core.models import Classifier
from mnist_core.predict import (
    Prediction,
    default_run_index,
    enlarge,
    load_run_model,
    predict_canvas,
    predict_upload,
    run_label,
)
from mnist_core.preprocess import ImageError
from mnist_core.text import plain, report
from pages.common import get_store, help_text, require_finished_runs

CANVAS_SIDE = 280
UPLOAD_TYPES = ["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"]
DRAW, UPLOAD = "Draw on the canvas", "Upload a picture"


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def cached_model(run_id: str, finished: float | None) -> Classifier:
    """One copy per run for all sessions (read-only in eval mode); the finish time in the key
    makes a retrained run load afresh."""
    return load_run_model(get_store(), run_id)


def clear_drawing() -> None:
    """A new canvas key gives an empty canvas; the old drawing stops being the model's input."""
    st.session_state["draw_canvas_number"] = st.session_state.get("draw_canvas_number", 0) + 1
    st.session_state.pop("drawn_digit", None)


def probability_figure(probabilities: np.ndarray, digit: int) -> go.Figure:
    colours = ["#3b5bdb" if d == digit else "#c5cbe0" for d in range(10)]
    fig = go.Figure(go.Bar(
        x=list(range(10)), y=probabilities, marker_color=colours,
        text=[f"{p:.0%}" for p in probabilities], textposition="outside", cliponaxis=False,
        hovertemplate="digit %{x}: %{y:.2%}<extra></extra>",
    ))
    fig.update_xaxes(title="digit", tickvals=list(range(10)), showgrid=False)
    fig.update_yaxes(title="probability", range=[0, 1.1], tickformat=".0%")
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 20, "b": 10})
    return fig


st.title("Draw a digit")
st.write(
    "Write a digit with your mouse or finger, or upload a photo of one, and see what a trained "
    "model thinks it is. The small picture in the middle is exactly what the model sees."
)

store = get_store()
runs = require_finished_runs("Train one first: one epoch of `cnn-small` takes about a minute on a CPU "
                             "and reads drawn digits well.", scope_key="draw_scope")

by_id = {r.id: r for r in runs}
run_id = st.selectbox(
    "Model that reads your digit", list(by_id),
    index=default_run_index(runs, st.session_state.get("draw_run")),
    format_func=lambda rid: run_label(by_id[rid]),
    help="Finished runs, best test accuracy first. Convolutional networks cope far better with "
         "hand-drawn digits than the linear model.",
)
st.session_state["draw_run"] = run_id
try:
    model = cached_model(run_id, by_id[run_id].finished)
except Exception as err:  # missing or damaged weights: say so instead of a traceback
    st.error(report(f"Could not load the model of run {run_id}", err))
    st.stop()

source = st.radio("Input", [DRAW, UPLOAD], horizontal=True, label_visibility="collapsed")
st.space("small")  # room for the canvas's floating toolbar, which would cover the radio
input_col, seen_col, chart_col = st.columns([1.25, 0.9, 1.6], gap="large")

prediction: Prediction | None = None
with input_col:
    if source == DRAW:
        canvas = st_canvas(
            stroke_width=18, stroke_color="#FFFFFF", background_color="#000000",
            width=CANVAS_SIDE, height=CANVAS_SIDE, drawing_mode="freedraw", return_image_data=True,
            key=f"draw_canvas_{st.session_state.get('draw_canvas_number', 0)}",
        )
        st.button("Clear", on_click=clear_drawing, icon=":material/ink_eraser:", help="Start again on an empty canvas.")
        prediction = predict_canvas(model, canvas.image_data)
        hint = "Draw a digit on the black square: one digit, large, in the middle works best."
    else:
        upload = st.file_uploader(
            "A picture of one digit", type=UPLOAD_TYPES,
            help="Any photo or scan of a single handwritten digit, dark on light or light on dark. "
                 "It is cropped, scaled and centred like MNIST before the model sees it.",
        )
        hint = "Upload a picture of a single digit."
        if upload is not None:
            try:
                prediction = predict_upload(model, upload.getvalue())
            except ImageError as err:
                st.error(f"Could not read {plain(upload.name, 80)}: {plain(err)}")
                hint = "Upload a picture in a common format (PNG, JPEG, GIF, BMP, WebP, TIFF)."
            else:
                if prediction is None:
                    hint = "No digit found in this picture: it looks blank. Try one with more contrast."

if prediction is not None:
    st.session_state["drawn_digit"] = prediction.model_input

with seen_col:
    st.markdown("**What the model sees**")
    if prediction is None:
        st.info(hint)
    else:
        st.image(enlarge(prediction.model_input, 6), width=168, caption="28 x 28 pixels, MNIST-style")
        st.subheader(f"Prediction: {prediction.digit}")
        st.caption(f"{prediction.probabilities[prediction.digit]:.0%} sure")

with chart_col:
    st.markdown("**Probability of each digit**", help=help_text("softmax"))
    if prediction is None:
        st.caption("The model's answer appears here once there is a digit to read.")
    else:
        st.plotly_chart(probability_figure(prediction.probabilities, prediction.digit),
                        config={"displayModeBar": False})

with st.expander("Why is my drawing cropped, shrunk and centred?"):
    st.write(
        "A model only works on inputs made the way its training images were made. MNIST's "
        "creators scanned handwritten digits, cropped each to its ink, scaled it so that its "
        "longer side is 20 pixels (keeping the aspect ratio, with anti-aliasing, which gives the "
        "soft grey edges), and placed it in a 28 x 28 frame so that its centre of mass sits in "
        "the middle. Digits are bright ink on a black background."
    )
    st.write(
        "Your drawing goes through the same steps before the model sees it. Fed a raw canvas "
        "squeezed to 28 x 28 instead (thin strokes, off-centre, the wrong size), even a model "
        "with 99% test accuracy misreads many digits. Uploaded photos are also turned into "
        "bright ink on black, whatever their colours."
    )
    st.write(help_text("normalisation"))
