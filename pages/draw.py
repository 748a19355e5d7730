"""Draw: write a digit (or upload a picture of one) and watch a trained model read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from mnist_core.engine.models import Classifier
from mnist_core.engine.predict import Prediction, enlarge, predict_strokes, predict_upload
from mnist_core.service.results import default_run_index, load_run_model, run_label
from mnist_core.engine.preprocess import ImageError
from mnist_core.teach.text import plain, report
from pages.common import get_store, help_text, require_finished_runs

CANVAS_SIDE = 280  # at most; narrower on a narrow column, so nothing is ever clipped
BRUSH = 0.06  # the pen on screen, as a fraction of the canvas side (the model's pen scales itself)
UPLOAD_TYPES = ["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"]
DRAW, UPLOAD = "Draw on the canvas", "Upload a picture"


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def cached_model(run_id: str, finished: float | None) -> Classifier:
    """One copy per run for all sessions (read-only in eval mode); the finish time in the key
    makes a retrained run load afresh."""
    return load_run_model(get_store(), run_id)


# Our own drawing surface instead of streamlit-drawable-canvas: since 0.11 that canvas always has
# a hover toolbar, invisible until hovered, lying over the top of the drawing, which swallowed
# strokes started there (always with touch). This one takes pointer events (mouse, pen, touch)
# anywhere on the canvas, keeps its strokes in canvas units (0..1, so the canvas may take any
# size) and sends them when a stroke ends; mnist_core.engine.predict draws them for the model.
# Its HTML, CSS and JavaScript are static files beside this page (pages/draw_surface/), read once
# per script run and passed inline: Streamlit serves them as the component's code.
SURFACE_DIR = Path(__file__).parent / "draw_surface"
SURFACE_HTML = (SURFACE_DIR / "surface.html").read_text(encoding="utf-8")
SURFACE_CSS = (SURFACE_DIR / "surface.css").read_text(encoding="utf-8")
SURFACE_JS = (SURFACE_DIR / "surface.js").read_text(encoding="utf-8")
draw_surface = st.components.v2.component("mnist_draw_surface", html=SURFACE_HTML, css=SURFACE_CSS, js=SURFACE_JS)


def look_inside(run_id: str) -> None:
    """Open Inside the network on the digit just read, with the model that read it."""
    st.session_state["inside_run"] = run_id
    st.session_state["inside_show_drawn"] = True
    st.switch_page("pages/inside.py")


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
# Stacked on a narrow screen: the answer comes straight under the canvas, the chart after it.
input_col, seen_col, chart_col = st.columns([1.25, 0.9, 1.6], gap="large")

prediction: Prediction | None = None
with input_col:
    if source == DRAW:
        saved = st.session_state.get("draw_strokes") or []
        strokes = draw_surface(
            key="draw_surface", data={"max_side": CANVAS_SIDE, "brush": BRUSH, "strokes": saved},
            default={"strokes": saved}, on_strokes_change=lambda: None, width="stretch",
        ).get("strokes")
        hint = "Draw a digit on the black square, with the mouse, a pen or a finger: one digit, any size."
        try:
            prediction = predict_strokes(model, strokes or [])
        except ValueError as err:  # the browser sent something that is not strokes
            hint = f"Could not read the drawing ({plain(err)}). Press Clear and draw again."
        else:
            st.session_state["draw_strokes"] = strokes  # redrawn when the visitor comes back
        if not strokes:
            st.session_state.pop("drawn_digit", None)
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
    if prediction is None:
        st.markdown("**What the model sees**")
        st.info(hint)
    else:
        st.subheader(f"Prediction: {prediction.digit}")
        st.caption(f"{prediction.probabilities[prediction.digit]:.0%} sure")
        st.markdown("**What the model sees**")
        st.image(enlarge(prediction.model_input, 6), width=168, caption="28 x 28 pixels, MNIST-style",
                 output_format="PNG")  # crisp pixels: JPEG would blur and ring them

with chart_col:
    st.markdown("**Probability of each digit**", help=help_text("softmax"))
    if prediction is None:
        st.caption("The model's answer appears here once there is a digit to read.")
    else:
        st.plotly_chart(probability_figure(prediction.probabilities, prediction.digit),
                        config={"displayModeBar": False})
        if st.button("Look inside this prediction", icon=":material/biotech:",
                     help="Open Inside the network on this digit: the feature maps it produced and "
                          "the pixels that drove the answer."):
            look_inside(run_id)

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
        "with 99% test accuracy misreads many digits. A drawing is also redrawn with a pen as "
        "thick, for its size, as MNIST's writers' pens, so a small digit is not a blob and a "
        "large one not a hairline. Uploaded photos are turned into bright ink on black, "
        "whatever their colours."
    )
    st.write(help_text("normalisation"))
