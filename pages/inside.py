"""Inside the network: what a trained model looks at, layer by layer and pixel by pixel."""

from pages.common import current_person, get_store, help_text, limits, load_data, require_data, require_finished_runs

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from mnist_core.service import access, results
from mnist_core.engine import insight
from mnist_core.service.access import Person
from mnist_core.engine.data import normalise
from mnist_core.engine.models import Classifier
from mnist_core.engine.predict import enlarge
from mnist_core.service.results import load_run_model, run_label
from mnist_core.engine.preprocess import normalise as normalise_drawing
from mnist_core.service.store import RunStoreError
from mnist_core.teach.summaries import digit_means
from mnist_core.teach.text import plain, report

TEST, DRAWN = "A test image", "The digit you drew"
TABS = ("Learned templates", "Feature maps", "Saliency", "Embedding")
TEMPLATES, MAPS, SALIENCY, _ = TABS
METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE"}
SPACE_TITLES = {"features": "What the head sees (penultimate layer)", "pixels": "Raw pixels (before any training)"}
IG_STEPS = (8, 16, 32, 64, 128)
SELECTION_SHOWN = 8  # digits shown under the embedding for a box or lasso selection
DIGIT_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
# Attribution colours: blue (against) - transparent (no effect) - red (for), so the digit shows through.
ATTRIBUTION_SCALE = [[0.0, "rgba(33,102,172,0.95)"], [0.5, "rgba(255,255,255,0)"], [1.0, "rgba(214,39,40,0.95)"]]
SIGNED_SCALE = "RdBu_r"
GREY_SCALE = "gray"
LIMIT_PERCENTILE = 99.5
DIM_INK = 2.5  # the digit under an attribution layer is drawn dark grey, so red and blue stand out
ASSUMED_WIDTH = 1000  # pixels: a wide-layout page; sets a mosaic's height from its aspect ratio


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def cached_model(run_id: str, finished: float | None) -> Classifier:
    """One copy per run for all sessions (read-only, eval mode); the finish time in the key makes
    a retrained run load afresh."""
    return load_run_model(get_store(), run_id)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_embedding(run_id: str, finished: float | None, method: str, space: str,
                     _person: Person) -> insight.Embedding:
    """Read from the run store (computed and stored there on the first request, when the
    visitor may: see insight.cached_embedding)."""
    data = load_data()
    assert data is not None, "require_data() ran first"
    return results.cached_embedding(get_store(), run_id, cached_model(run_id, finished), data.test_images,
                                    method, space, person=_person, limits=limits())


def robust_limit(values: np.ndarray) -> float:
    """The colour range's end: a high percentile of |value|, so one extreme pixel does not wash
    out all the others (it is simply drawn at full colour)."""
    finite = np.abs(values[np.isfinite(values)])
    return float(np.percentile(finite, LIMIT_PERCENTILE)) if finite.size and finite.max() > 0 else 1.0


def mosaic_figure(maps: np.ndarray, columns: int, signed: bool, what: str, scale_each: bool = True,
                  tick_labels: bool = False) -> go.Figure:
    """Small maps as one heatmap with gaps; hovering names the map (`what` n) and its value."""
    mosaic, which = insight.tile(maps, columns, scale_each)
    limit = robust_limit(mosaic)
    colours = {"colorscale": SIGNED_SCALE, "zmid": 0.0, "zmin": -limit, "zmax": limit} if signed else {
        "colorscale": GREY_SCALE, "zmin": 0.0, "zmax": limit}
    fig = go.Figure(go.Heatmap(
        z=mosaic, customdata=which, showscale=False, **colours,
        hovertemplate=f"{what} %{{customdata}}<br>value %{{z:.3f}}<extra></extra>",
    ))
    shown, width = min(columns, len(maps)), maps.shape[2]
    fig.update_xaxes(visible=tick_labels, showgrid=False, zeroline=False,
                     tickvals=[i * (width + 1) + (width - 1) / 2 for i in range(shown)],
                     ticktext=[str(i) for i in range(shown)], side="top")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", showgrid=False, zeroline=False)
    top = 30 if tick_labels else 10
    height = int(np.clip(ASSUMED_WIDTH * mosaic.shape[0] / mosaic.shape[1], 90, 900)) + top
    fig.update_layout(height=height, margin={"l": 0, "r": 0, "t": top, "b": 0}, plot_bgcolor="rgba(0,0,0,0)")
    return fig


def saliency_figure(image: np.ndarray, panels: list[tuple[str, np.ndarray]]) -> go.Figure:
    """Each attribution map as a transparent red/blue layer over the dimmed digit."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for title, _ in panels],
                        horizontal_spacing=0.03)
    for column, (_, attribution) in enumerate(panels, start=1):
        limit = robust_limit(attribution)
        fig.add_trace(go.Heatmap(z=image, colorscale=GREY_SCALE, zmin=0, zmax=DIM_INK, showscale=False,
                                 hoverinfo="skip"), row=1, col=column)
        fig.add_trace(go.Heatmap(
            z=attribution, colorscale=ATTRIBUTION_SCALE, zmin=-limit, zmax=limit, showscale=False,
            hovertemplate="row %{y}, column %{x}<br>attribution %{z:.3f}<extra></extra>",
        ), row=1, col=column)
        fig.update_xaxes(visible=False, row=1, col=column)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=f"x{column if column > 1 else ''}",
                         row=1, col=column)
    fig.update_layout(height=300, margin={"l": 0, "r": 0, "t": 40, "b": 0})
    fig.update_annotations(font_size=13)
    return fig


def embedding_figure(frame, title: str) -> go.Figure:
    """Per true digit, a trace of dots and a trace of crosses (its mistakes) in one legend group,
    so clicking a digit in the legend hides or shows both."""
    fig = go.Figure()
    for digit in range(10):
        of_digit = frame[frame["label"] == digit]
        for correct, symbol, size in ((True, "circle", 5), (False, "x", 9)):
            part = of_digit[of_digit["correct"] == correct]
            fig.add_trace(go.Scattergl(
                x=part["x"], y=part["y"], mode="markers", name=str(digit), legendgroup=str(digit),
                showlegend=correct, customdata=part[["index", "label", "prediction"]].to_numpy(),
                marker={"color": DIGIT_COLOURS[digit], "symbol": symbol, "size": size, "opacity": 0.8},
                hovertemplate="test image #%{customdata[0]}<br>true %{customdata[1]}, "
                              "predicted %{customdata[2]}<extra></extra>",
            ))
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=460, legend_title_text="true digit",
                      margin={"l": 0, "r": 0, "t": 40, "b": 0})
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None)
    return fig


def use_test_image(index: int) -> None:
    """Callback: make a selected embedding point the page's input digit."""
    st.session_state["inside_source"] = TEST
    st.session_state["inside_index"] = index


def suited_view(model: Classifier) -> str:
    """The tab a model opens on: templates for a linear model, feature maps for a convolutional
    one, saliency (which works for every model) otherwise."""
    if insight.is_linear_model(model):
        return TEMPLATES
    return MAPS if insight.conv_layers(model) else SALIENCY


def why(text: str) -> None:
    with st.expander("Why? How to read this"):
        st.markdown(text)


data = require_data()
st.title("Inside the network")
st.write(
    "What has a trained network learned, and what does it look at when it reads a digit? Pick a "
    "finished run and an input digit, then open the tabs: the weights of a linear model as pictures, "
    "the patterns each filter of a network picks out, the pixels that drove a decision, and how the "
    "network arranges thousands of test digits in its own feature space."
)

store = get_store()
runs = require_finished_runs("Train one first: a `linear` run takes seconds, one epoch of `cnn-small` "
                             "about a minute on a CPU.", scope_key="inside_scope")

by_id = {r.id: r for r in runs}
run_column, input_column = st.columns([1.2, 1], gap="large")
with run_column:
    run_id = st.selectbox(
        "Run to look inside", list(by_id), format_func=lambda rid: run_label(by_id[rid]), key="inside_run",
        help="Finished runs, best test accuracy first. Templates need a linear run, feature maps a "
             "convolutional (cnn-…) run; saliency and embeddings work for every model.",
    )
record = by_id[run_id]
model_name = record.config.get("model", "?")
try:
    model = cached_model(run_id, record.finished)
except (RunStoreError, RuntimeError, KeyError) as err:  # missing, damaged or mismatched weights
    st.error(report(f"Could not load the model of run {run_id}", err))
    st.stop()

drawn = st.session_state.get("drawn_digit")
sources = [TEST] + ([DRAWN] if drawn is not None else [])
if st.session_state.pop("inside_show_drawn", False) and drawn is not None:  # "Look inside" on Draw
    st.session_state["inside_source"] = DRAWN
with input_column:
    source = st.radio(
        "Input digit", sources, horizontal=True, key="inside_source",
        help="A digit from the 10,000 test images, or the last digit you drew on the Draw page "
             "(after MNIST-style centring).",
    )
    if source == TEST:
        index = int(st.number_input(
            "Test image number", min_value=0, max_value=len(data.test_images) - 1, step=1,
            key="inside_index", help="Any of the 10,000 test images, numbered from 0. The Inspect "
                                     "buttons under the Embedding charts pick one too.",
        ))
        image = data.test_images[index].numpy().astype(np.float32) / 255.0
        x = normalise(data.test_images[index : index + 1])
        truth: int | None = int(data.test_labels[index])
    else:
        st.caption("Draw a different digit on the Draw page to change it.")
        try:
            x = normalise_drawing(drawn)
        except ValueError as err:
            st.warning(f"The drawn digit cannot be used ({plain(err)}); pick a test image instead.")
            st.stop()
        image = np.asarray(drawn, dtype=np.float32)
        truth = None

probabilities = insight.class_probabilities(model, x)
predicted = int(probabilities.argmax())
picture, verdict = st.columns([0.25, 1])
picture.image(enlarge(image, 4), width=112, caption="the input (28×28)", output_format="PNG")
with verdict:
    st.metric("The model reads", str(predicted), f"{probabilities[predicted]:.1%} sure", delta_color="off",
              delta_arrow="off")
    if truth is not None:
        st.caption(f"True label: **{truth}** — " + ("correct." if truth == predicted else "a mistake."))

# The default is part of the tabs' identity: choosing a run of another kind opens its own view.
tabs = st.tabs(list(TABS), default=suited_view(model), key="inside_tab", on_change="rerun")

with tabs[0]:
    if tabs[0].open:
        st.markdown(
            "A **linear** model scores each digit as a weighted sum of the 784 pixels plus a bias, "
            "and answers with the highest score. So each digit owns one 28×28 picture of weights: a "
            "*template*. Beside it is the digit's mean image, the template of the nearest-mean baseline."
        )
        if insight.is_linear_model(model):
            st.markdown("**Mean image of each digit** (the baseline's templates)")
            st.plotly_chart(mosaic_figure(digit_means(data), 10, signed=False, what="digit",
                                          scale_each=False, tick_labels=True), key="inside_means")
            st.markdown("**Learned weights of each digit** (red: ink here raises the score, blue: lowers it)")
            st.plotly_chart(mosaic_figure(insight.linear_templates(model), 10, signed=True, what="digit",
                                          scale_each=False, tick_labels=True), key="inside_templates")
            why(
                "The mean images say where ink usually *is*. The learned weights say where ink "
                "*tells this digit apart from the others*: training pushes the weights to separate "
                "the classes, not to look like them. That is why a 0's template is red on the ring "
                "and blue in the middle (ink in the middle means: not a 0), and why the learned "
                "classifier beats distance-to-the-mean by about 10 points. Pixels near the border hold "
                "no ink in any image, so their weights cannot tell digits apart: they keep their "
                "random starting speckle, shifted together like a second bias.\n\n"
                + help_text("mean_image") + "\n\n" + help_text("baseline")
            )
        else:
            st.info(
                f"This run is a `{model_name}` model: its first layer does not look at the pixels "
                "with one weight picture per digit, so there are no templates to show. Pick a "
                "`linear` run above to see them; for a `cnn-…` run open **Feature maps**."
            )

with tabs[1]:
    if tabs[1].open:
        st.markdown(help_text("convolution"))
        st.caption(help_text("layer_names"))
        layers = insight.conv_layers(model)
        if not layers:
            st.info(
                f"This run is a `{model_name}` model, which has no convolution layers, so there are "
                "no filters or feature maps. Pick a `cnn-…` run above."
            )
        else:
            filters = insight.first_layer_filters(model)
            st.markdown(f"**The {len(filters)} filters of the first layer** ({filters.shape[1]}×{filters.shape[2]} "
                        "weights each; red positive, blue negative)")
            st.plotly_chart(mosaic_figure(filters, 16, signed=True, what="filter"), key="inside_filters")
            for name, maps in insight.feature_maps(model, x):
                signed = bool((maps < 0).any())
                st.markdown(f"**{name}** — {len(maps)} maps of {maps.shape[1]}×{maps.shape[2]}"
                            + (" (before its activation: negative values in blue)" if signed else " (after ReLU)"))
                st.plotly_chart(mosaic_figure(maps, 16, signed=signed, what="channel"),
                                key=f"inside_maps_{name}")
            why(
                "Read the first layer's maps as the input digit seen through each filter: edges of one "
                "direction light up in one map, the opposite direction in another. Deeper layers "
                "combine the maps below them, after pooling has halved the resolution, so their maps "
                "are coarser and respond to larger parts of a digit (a loop, a crossing); the last "
                "ones are what the classifier head reads. Each small square is scaled to its own "
                "maximum, so a weak map's pattern stays visible; an all-black square is a channel "
                "this input does not excite at all.\n\n" + help_text("activation")
            )

with tabs[2]:
    if tabs[2].open:
        st.markdown(
            "**Saliency** asks which pixels made the model score a digit. Red pixels pushed the "
            "score up, blue ones pushed it down; transparent ones did not matter. Both methods "
            "compare the input with an all-black image (no ink at all)."
        )
        st.caption(help_text("logits"))
        ranked = np.argsort(-probabilities)
        left, right = st.columns(2)
        other = int(left.selectbox(
            "Also explain the score of digit", list(range(10)), index=int(ranked[1]), key="inside_target",
            help="By default the model's second choice: where does the image look like that digit, "
                 "and what argues against it?",
        ))
        steps = int(right.select_slider(
            "Integrated-gradients steps", IG_STEPS, value=32, key="inside_ig_steps",
            help="How many images along the path from black to the input are averaged. More steps "
                 "make the attributions add up more exactly to the change of the score.",
        ))
        for digit in dict.fromkeys([predicted, other]):
            plain = insight.saliency(model, x, digit, "gradient_x_input")
            integrated = insight.saliency(model, x, digit, "integrated_gradients", steps)
            role = "the prediction" if digit == predicted else "your pick"
            st.plotly_chart(saliency_figure(image, [
                (f"Gradient × input — digit {digit} ({role})", plain),
                (f"Integrated gradients — digit {digit} ({role})", integrated),
            ]), key=f"inside_saliency_{digit}")
            st.caption(
                f"Score of {digit}: input minus black image = {insight.logit_gap(model, x, digit):+.3f}; "
                f"integrated gradients add up to {integrated.sum():+.3f}, gradient × input to "
                f"{plain.sum():+.3f}."
            )
        why(
            "**Gradient × input** multiplies how sensitive the score is to each pixel (the gradient) "
            "by how much ink the pixel has. It is one backward pass, but the gradient only describes "
            "the model right at the input: a pixel that already saturated a ReLU gets no credit.\n\n"
            "**Integrated gradients** averages the gradient along a straight path of images from "
            "black to the input, then multiplies by the ink. Its attributions add up to the change "
            "of the score between the black image and the input (compare the numbers under each "
            "figure). For a linear model both methods give the same picture: weight × ink.\n\n"
            + help_text("activation")
        )

with tabs[3]:
    if tabs[3].open:
        st.markdown(
            f"An **embedding** places {insight.EMBED_N} test digits on a plane so that digits the "
            "network represents alike land close together. Left: the vectors the classifier head "
            "reads (the penultimate layer). Right: the raw pixels, i.e. the picture before training. "
            "Colour is the true digit, a cross marks a test image the model gets wrong."
        )
        st.caption(help_text("penultimate"))
        method = st.radio(
            "Projection", list(METHOD_NAMES), format_func=METHOD_NAMES.get, horizontal=True, key="inside_method",
            help="PCA: the flat shadow along the two directions of largest spread — fast, faithful to "
                 "distances, but classes overlap. t-SNE: keeps close neighbours close, which separates "
                 "clusters clearly; distances between clusters mean little.",
        )
        stored = all(store.has_tensors(run_id, insight.embedding_name(method, space)) for space in insight.SPACES)
        prompt = st.empty()
        person = current_person()
        if method == "tsne" and not stored:
            with prompt.container():
                st.info("t-SNE is computed once per run (about half a minute on a CPU) and then stored with it.")
                if limits().read_only:
                    st.caption("This read-only demo shows only the t-SNE embeddings stored before; this run has none.")
                    st.stop()
                if not access.may_manage(person, record):
                    st.caption("Only the run's owner or the teacher may start one (it occupies the server for "
                               "half a minute); PCA works for everyone.")
                    st.stop()
                if not st.button("Compute t-SNE for this run", type="primary", key="inside_tsne"):
                    st.stop()
        try:
            with st.spinner(f"Preparing the {METHOD_NAMES[method]} embedding (computed once per run, then loaded)…"):
                embeddings = {space: cached_embedding(run_id, record.finished, method, space, person)
                              for space in insight.SPACES}
        except access.NotAllowed as err:
            st.error(plain(err))
            st.stop()
        except RunStoreError as err:
            st.error(report("Could not compute or store the embedding", err))
            st.stop()
        prompt.empty()
        frames = {space: insight.embedding_frame(embeddings[space], data.test_labels.numpy())
                  for space in insight.SPACES}
        chosen: list[int] = []
        for column, space in zip(st.columns(2), insight.SPACES):
            with column:
                event = st.plotly_chart(
                    embedding_figure(frames[space], SPACE_TITLES[space]), on_select="rerun",
                    selection_mode=("points", "box", "lasso"), key=f"inside_embedding_{space}_{method}",
                )
                chosen += [i for i in insight.selected_indices(event.selection.points) if i not in chosen]
        chosen = insight.mistakes_first(chosen, frames["features"])
        frame = frames["features"].set_index("index")
        wrong = int((~frame["correct"]).sum())
        st.caption(f"{wrong} of {len(frame)} shown digits are misclassified. Click a point (or choose the "
                   f"box or lasso tool above a chart and circle several) to see the digits here, "
                   f"{SELECTION_SHOWN} at most, mistakes first.")
        for position, (place, index) in enumerate(zip(st.columns(SELECTION_SHOWN), chosen[:SELECTION_SHOWN])):
            row = frame.loc[index]
            place.image(enlarge(data.test_images[index], 3), width=84)
            place.caption(f"#{index}: true {row['label']}, read as {row['prediction']}")
            place.button("Inspect", on_click=use_test_image, args=(index,), key=f"inside_use_{position}",
                         help="Make this digit the input of the other tabs.")
        why(
            "In the raw-pixel picture the digits overlap heavily: two 7s written differently differ in "
            "many pixels. Training reshapes the space so that each digit forms its own tight group, "
            "because the head can only draw straight boundaries between groups. Crosses sitting in "
            "another digit's cluster are images that look like that digit to the network; crosses "
            "between clusters are the ambiguous ones. For a `linear` run the two plots agree: its "
            "'features' are the pixels themselves."
            + ("" if method == "pca" else " t-SNE stretches and shrinks the plane freely: only "
               "neighbourhoods are meaningful, not sizes or distances between clusters.")
        )
