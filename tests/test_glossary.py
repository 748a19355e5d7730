"""Every glossary term a page shows is explained on that page.

Each page is rendered with AppTest (with a finished linear and a finished cnn-fast run in the
store, for the pages that need one) and its text is read the way a visitor sees it:

* prose: titles, markdown, captions, alerts, metrics, chart titles and legends, tab and expander
  labels, and what is inside expanders (a visitor opens them without leaving the page);
* widgets: a widget's label and the value it shows;
* hover: the "?" tooltips.

A term met in prose must be defined in prose (its glossary text appears, in a caption, an
expander or the text itself). A term met only in a widget's label or value may be defined in a
tooltip instead: the "?" sits right next to it. Glossary texts are taken out before looking for
terms, so the words a definition uses do not count as uses. The terms and their words come from
mnist_core.glossary, never from this file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pytest
from streamlit.testing.v1 import AppTest

from mnist_core.config import TrainConfig
from mnist_core.data import Mnist
from mnist_core.glossary import GLOSSARY, WORDS, explain, terms_in
from mnist_core.jobs import run_id_for
from mnist_core.runs import RunStore
from tests.conftest import ROOT
from tests.synthetic import train_here

SEED = 1207  # a seed no other test uses, so these runs are this file's own
WIDGETS = {  # AppTest's element classes of the widgets (a form's submit button is a Button)
    "Button", "ButtonGroup", "Checkbox", "ColorPicker", "DateInput", "Multiselect", "NumberInput", "Radio",
    "SelectSlider", "Selectbox", "Slider", "TextArea", "TextInput", "TimeInput", "Toggle",
}


def test_every_entry_says_which_words_name_it():
    assert set(WORDS) == set(GLOSSARY)
    for term, words in WORDS.items():
        assert words, term
        for word in words:
            re.compile(word)


def test_terms_in_finds_the_words_of_an_entry_and_no_other():
    assert terms_in("Two 5x5 conv layers with batch-norm") == ["convolution", "batch_norm"]
    assert terms_in("a small VGG-style net") == ["vgg"]
    assert terms_in("conv1 (features.0) — 16 maps") == ["layer_names"]
    assert terms_in("the penultimate layer") == ["penultimate"]
    assert terms_in("smoothed (EMA)") == ["ema"]
    assert terms_in("hyperparameter") == []  # "parameter" inside a longer word is not the term
    assert terms_in("Precision and recall") == ["precision_recall"]  # not the number format


def test_explain_names_the_known_terms_on_a_typo():
    with pytest.raises(KeyError, match="epoch"):
        explain("epoc")


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class Screen:
    """The text of one rendered page, sorted by how a visitor meets it."""

    prose: list[str] = field(default_factory=list)
    widgets: list[str] = field(default_factory=list)
    hover: list[str] = field(default_factory=list)

    def defines(self, term: str, hover_too: bool) -> bool:
        places = self.prose + (self.hover if hover_too else [])
        return any(squash(explain(term)) in squash(text) for text in places)

    def uses(self, texts: list[str]) -> set[str]:
        used = set()
        for text in texts:
            text = squash(text)
            for definition in GLOSSARY.values():  # the words inside a definition are not uses
                text = text.replace(squash(definition), " ")
            used.update(terms_in(text))
        return used


def chart_text(spec: str) -> list[str]:
    """What a Plotly chart writes on screen: its title, axis titles and legend entries."""
    figure = json.loads(spec)
    layout = figure.get("layout", {})
    texts = []
    for part in [layout] + [v for k, v in layout.items() if k.startswith(("xaxis", "yaxis"))]:
        title = part.get("title") if isinstance(part, dict) else None
        texts.append(title.get("text", "") if isinstance(title, dict) else str(title or ""))
    texts += [str(trace.get("name") or "") for trace in figure.get("data", []) if trace.get("showlegend", True)]
    return [t for t in texts if t]


def shown_value(widget) -> list[str]:
    """The option text a widget displays: the chosen one of a select box, every one of a radio."""
    proto = widget.proto
    options = [getattr(o, "content", o) for o in getattr(proto, "options", [])]
    kind = type(widget).__name__
    if kind in ("Radio", "ButtonGroup", "SegmentedControl"):
        return [str(o) for o in options]
    if kind == "Selectbox":
        if proto.HasField("raw_value"):
            return [proto.raw_value]
        return [options[widget.index]] if options and widget.index is not None else []
    if kind == "Multiselect":
        return list(getattr(proto, "raw_values", []))
    return []


def read(node, screen: Screen) -> None:
    children = getattr(node, "children", None)
    if children is not None:  # a block: an expander's or a tab's label is prose
        label = getattr(node, "label", None)
        if isinstance(label, str) and label:
            screen.prose.append(label)
        for key in sorted(children):
            read(children[key], screen)
        return
    proto, kind = node.proto, type(node).__name__
    help_text = getattr(proto, "help", "")
    if help_text:
        screen.hover.append(help_text)
    if kind in WIDGETS:
        screen.widgets.append(getattr(proto, "label", ""))
        screen.widgets += shown_value(node)
        return
    for name in ("body", "label", "text"):
        value = getattr(proto, name, "")
        if isinstance(value, str) and value:
            screen.prose.append(value)
    if kind == "Image":
        screen.prose += [img.caption for img in proto.imgs if img.caption]
    spec = getattr(proto, "spec", "")
    if isinstance(spec, str) and spec.startswith("{"):
        screen.prose += chart_text(spec)


def screen_of(at: AppTest) -> Screen:
    screen = Screen()
    read(at.main, screen)
    return screen


def undefined_terms(screen: Screen) -> dict[str, str]:
    """Terms used on the screen without their explanation, each with where it was met."""
    missing = {}
    for term in screen.uses(screen.prose):
        if not screen.defines(term, hover_too=False):
            missing[term] = "used in the text, not explained in the text, a caption or an expander"
    for term in screen.uses(screen.widgets) - set(missing):
        if not screen.defines(term, hover_too=True):
            missing[term] = "used by a widget, not explained on the page or in its tooltip"
    return missing


@pytest.fixture(scope="module")
def runs(mnist) -> dict[str, str]:
    """A finished linear and cnn-fast run with a validation split, trained here on 2,000 images."""
    small = Mnist(mnist.train_images[:2000], mnist.train_labels[:2000], mnist.test_images[:300],
                  mnist.test_labels[:300], source=mnist.source, folder=mnist.folder)
    store = RunStore()
    ids = {}
    for model in ("linear", "cnn-fast"):
        config = TrainConfig(model=model, epochs=2, batch_size=64, lr=3e-3, val_split=0.1, seed=SEED,
                             device="cpu")
        if store.get_run(run_id_for(config)) is None:
            assert train_here(store, config, small) == "finished"
        ids[model] = run_id_for(config)
    return ids


# (view name, page, the run it shows, extra session state): every page, every tab of Inside.
VIEWS = [
    ("home", "pages/home.py", None, {}),
    ("dataset", "pages/dataset.py", None, {}),
    ("mean images", "pages/mean_images.py", None, {}),
    ("train, nothing watched", "pages/train.py", None, {}),
    ("train, a finished cnn-fast run", "pages/train.py", "cnn-fast", {}),
    ("evaluate", "pages/evaluate.py", "cnn-fast", {}),
    ("compare", "pages/compare.py", None, {}),
    ("draw", "pages/draw.py", None, {}),
    ("inside, templates", "pages/inside.py", "linear", {"inside_tab": "Learned templates"}),
    ("inside, feature maps", "pages/inside.py", "cnn-fast", {"inside_tab": "Feature maps"}),
    ("inside, saliency", "pages/inside.py", "cnn-fast", {"inside_tab": "Saliency"}),
    ("inside, embedding", "pages/inside.py", "cnn-fast", {"inside_tab": "Embedding", "inside_method": "pca"}),
    pytest.param("sweeps", "pages/sweeps.py", None, {}, marks=pytest.mark.xfail(
        strict=True, reason="pages/sweeps.py (another engineer's page) does not explain its terms yet")),
]


@pytest.mark.parametrize(("view", "page", "model", "state"), VIEWS, ids=[
    v.values[0] if hasattr(v, "values") else v[0] for v in VIEWS])
def test_every_term_a_page_uses_is_explained_on_it(runs, view, page, model, state):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(page)
    if model is not None:
        at.query_params["run"] = runs[model]
        if page == "pages/inside.py":
            at.session_state["inside_run"] = runs[model]
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    screen = screen_of(at)
    assert screen.prose, f"{view}: nothing read from the page"
    assert undefined_terms(screen) == {}, view
