"""The "Inside the network" page renders every tab without an exception for a finished linear
run and a finished cnn-small run (trained here on 2,000 real training images), with a test
image or a drawn digit as input; embeddings are stored with the run on first view."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from mnist_core.engine import insight
from mnist_core.engine.config import TrainConfig
from mnist_core.engine.data import Mnist
from mnist_core.service.lifecycle import run_id_for
from mnist_core.service.results import finished_runs
from mnist_core.service.store import RunStore
from tests.conftest import ROOT
from tests.synthetic import train_here

PAGE = "pages/inside.py"
SEED = 606  # a seed no other test uses, so these runs are this file's own


@pytest.fixture(scope="module")
def runs(mnist) -> dict[str, str]:
    """A finished linear and cnn-small run in the store the page opens (MNIST_RUNS_DIR).

    Trained on 2,000 real images and scored on 200: the page itself never reads the stored
    test-set results, and scoring all 10,000 would double the CPU time of this fixture."""
    small = Mnist(mnist.train_images[:2000], mnist.train_labels[:2000], mnist.test_images[:200],
                  mnist.test_labels[:200], source=mnist.source, folder=mnist.folder)
    store = RunStore()
    ids = {}
    for model in ("linear", "cnn-small"):
        config = TrainConfig(model=model, epochs=1, batch_size=64, lr=3e-3, val_split=0.0, seed=SEED,
                             device="cpu")
        assert train_here(store, config, small) == "finished"
        ids[model] = run_id_for(config)
    return ids


def open_page(run_id: str, tab: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(PAGE)
    at.session_state["inside_run"] = run_id
    if tab is not None:
        at.session_state["inside_tab"] = tab
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def array(value) -> np.ndarray:
    """A figure's data array: Plotly sends numpy data base64-encoded with dtype and shape."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = [int(n) for n in value["shape"].split(",")] if "shape" in value else [-1]
        return flat.reshape(shape)
    return np.asarray(value)


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in [*at.markdown, *at.caption, *at.info, *at.warning, *at.error])


def test_templates_of_a_linear_run(runs):
    at = open_page(runs["linear"])
    assert [t.label for t in at.tabs] == ["Learned templates", "Feature maps", "Saliency", "Embedding"]
    figures = charts(at)
    assert len(figures) == 2  # mean images and learned weights, both as one 10-tile mosaic
    assert all(array(f["data"][0]["z"]).shape == (28, 10 * 29 - 1) for f in figures)
    assert "Learned weights" in texts(at)
    assert not at.error


def test_a_cnn_run_opens_on_its_feature_maps(runs):
    at = open_page(runs["cnn-small"])
    assert at.session_state["inside_tab"] == "Feature maps"
    assert len(charts(at)) == 3  # the filters, then one mosaic per conv layer
    assert "no templates" not in texts(at)


def test_choosing_another_kind_of_run_opens_its_view(runs):
    at = open_page(runs["linear"])
    assert at.session_state["inside_tab"] == "Learned templates"
    at.selectbox(key="inside_run").set_value(runs["cnn-small"]).run()
    assert not at.exception
    assert at.session_state["inside_tab"] == "Feature maps"
    assert len(charts(at)) == 3


def test_templates_explained_for_a_cnn_run(runs):
    at = open_page(runs["cnn-small"], "Learned templates")
    assert not charts(at)
    assert "no templates" in texts(at)


def test_feature_maps_of_a_cnn_run(runs):
    at = open_page(runs["cnn-small"], "Feature maps")
    figures = charts(at)
    assert len(figures) == 3  # the filters, then one mosaic per conv layer
    body = texts(at)
    assert "16 filters" in body and "conv1" in body and "conv2" in body and "32 maps of 14×14" in body


def test_feature_maps_explained_for_a_linear_run(runs):
    at = open_page(runs["linear"], "Feature maps")
    assert not charts(at)
    assert "no convolution layers" in texts(at)


@pytest.mark.parametrize("model", ["linear", "cnn-small"])
def test_saliency_for_the_prediction_and_a_chosen_digit(runs, model):
    at = open_page(runs[model], "Saliency", inside_index=7)
    figures = charts(at)
    assert len(figures) == 2  # the predicted digit and the runner-up
    assert all(len(f["data"]) == 4 for f in figures)  # two methods, each digit + attribution layer
    assert texts(at).count("integrated gradients add up to") == 2
    predicted = int(at.metric[0].value)
    other = (predicted + 1) % 10
    at.selectbox(key="inside_target").set_value(other).run()
    assert not at.exception
    captions = [c.value for c in at.caption if "add up to" in c.value]
    assert captions[0].startswith(f"Score of {predicted}") and captions[1].startswith(f"Score of {other}")


def test_embedding_is_computed_once_and_stored(runs):
    store = RunStore()
    run_id = runs["cnn-small"]
    at = open_page(run_id, "Embedding")
    figures = charts(at)
    assert len(figures) == 2  # learned features and raw pixels
    for figure in figures:
        assert len(figure["data"]) == 20  # per true digit: right (dots) and wrong (crosses)
        assert sum(trace["showlegend"] for trace in figure["data"]) == 10
        assert sum(len(array(trace["x"])) for trace in figure["data"]) == insight.EMBED_N
    assert store.has_tensors(run_id, "embedding_pca") and store.has_tensors(run_id, "embedding_pixels_pca")
    assert not any(b.label == "Compute t-SNE for this run" for b in at.button)
    # t-SNE waits for the button: opening it never starts a half-minute computation. Only the
    # run's owner or the teacher gets the button (this run has no owner).
    at.radio(key="inside_method").set_value("tsne").run()
    assert not at.exception
    assert not any(b.label == "Compute t-SNE for this run" for b in at.button)
    assert any("Only the run's owner or the teacher" in c.value for c in at.caption)
    at = open_page(run_id, "Embedding", is_teacher=True)
    at.radio(key="inside_method").set_value("tsne").run()
    assert any(b.label == "Compute t-SNE for this run" for b in at.button)
    assert not charts(at) and not store.has_tensors(run_id, "embedding_tsne")
    # Once stored with the run (here: the PCA positions under the t-SNE names), it is shown at once.
    for space in insight.SPACES:
        pca = store.load_tensors(run_id, insight.embedding_name("pca", space))
        store.save_tensors(run_id, insight.embedding_name("tsne", space), pca)
    at.run()
    assert not at.exception
    assert not any(b.label == "Compute t-SNE for this run" for b in at.button)
    assert len(charts(at)) == 2


def test_a_drawn_digit_as_input(runs):
    drawn = np.zeros((28, 28), dtype=np.float32)
    drawn[6:22, 13:16] = 1.0  # a "1"
    at = open_page(runs["cnn-small"], "Saliency", drawn_digit=drawn)
    assert at.radio(key="inside_source").options == ["A test image", "The digit you drew"]
    at.radio(key="inside_source").set_value("The digit you drew").run()
    assert not at.exception
    assert len(charts(at)) >= 1
    assert "True label" not in texts(at)


def test_look_inside_from_draw_opens_the_drawn_digit(runs):
    drawn = np.zeros((28, 28), dtype=np.float32)
    drawn[6:22, 13:16] = 1.0
    at = open_page(runs["cnn-small"], drawn_digit=drawn, inside_show_drawn=True)
    assert at.radio(key="inside_source").value == "The digit you drew"
    assert "inside_show_drawn" not in at.session_state  # once: the visitor's later choice stands
    assert "True label" not in texts(at) and len(charts(at)) == 3


def test_a_broken_drawing_is_a_warning_not_a_traceback(runs):
    at = open_page(runs["linear"], drawn_digit=np.zeros((5, 5)), inside_source="The digit you drew")
    assert at.warning and "cannot be used" in at.warning[0].value


def test_a_deleted_run_falls_back_to_the_best_one(runs):
    at = open_page("linear-000000000000")
    assert at.selectbox(key="inside_run").value == finished_runs(RunStore())[0].id
