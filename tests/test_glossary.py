"""Every glossary term a page shows is explained on that page.

Each page is rendered with AppTest (with a finished linear and a finished cnn-fast run in the
store, for the pages that need one) and its text is read as a visitor meets it: titles,
markdown, captions, alerts, metrics, chart titles and legends, expander labels and what is
inside expanders (a visitor opens them without leaving the page), and each widget's label and
the value it shows; each with its "?" tooltip, if it has one.

A term is explained when its glossary text appears in the page's text (a caption, an expander,
the text itself), or in the tooltip of the very element that uses it: the "?" sits right next
to the word. Glossary texts are taken out before looking for terms, so the words a definition
uses do not count as uses; so are run names and ids (names, not prose), and tab labels (each
tab explains its own subject when opened). The terms and their words come from
mnist_core.teach.glossary, never from this file.
"""

from collections.abc import Iterator
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pytest
from streamlit.testing.v1 import AppTest

from mnist_core.engine.config import TrainConfig
from mnist_core.engine.data import Mnist
from mnist_core.teach.glossary import ENTRIES, GLOSSARY, explain, notes, terms_in
from mnist_core.service.lifecycle import run_id_for
from mnist_core.engine.naming import run_name
from mnist_core.service.store import RunStore
from tests.conftest import ROOT, svg_from_url
from tests.synthetic import train_here

SEED = 1207  # a seed no other test uses, so these runs are this file's own
WIDGETS = {  # AppTest's element classes of the widgets (a form's submit button is a Button)
    "Button", "ButtonGroup", "Checkbox", "ColorPicker", "DateInput", "Multiselect", "NumberInput", "Radio",
    "SelectSlider", "Selectbox", "Slider", "TextArea", "TextInput", "TimeInput", "Toggle",
}


def test_every_entry_has_a_title_one_to_three_sentences_and_words_that_find_it():
    for term, entry in ENTRIES.items():
        assert entry.title and entry.words, term
        sentences = re.findall(r"[.!?](?=\s+[A-Z'(]|\s*$)", entry.text)  # not "e.g. 3x3"
        assert 1 <= len(sentences) <= 3, (term, entry.text)


def test_terms_in_finds_the_words_of_an_entry_and_no_other():
    assert terms_in("Two 5x5 conv layers with batch-norm") == ["convolution", "batch_norm"]
    assert terms_in("a small VGG-style net") == ["vgg"]
    assert terms_in("conv1 (features.0) — 16 maps") == ["layer_names"]
    assert terms_in("the penultimate layer") == ["penultimate"]
    assert terms_in("smoothed (EMA)") == ["ema"]
    assert terms_in("the first four unpadded") == ["padding"]
    assert terms_in("hyperparameter") == []  # "parameter" inside a longer word is not the term
    assert terms_in("Precision and recall") == ["precision_recall"]  # not the number format


def test_explain_names_the_known_terms_on_a_typo():
    with pytest.raises(KeyError, match="epoch"):
        explain("epoc")


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class Screen:
    """The text of one rendered page: (text, its tooltip) per element."""

    texts: list[tuple[str, str]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # run names and ids: not prose

    def add(self, text: str, tooltip: str = "") -> None:
        if text:
            self.texts.append((text, tooltip))

    def explains(self, term: str, tooltip: str) -> bool:
        definition = squash(explain(term))
        return definition in squash(tooltip) or any(definition in squash(text) for text, _ in self.texts)

    def undefined(self) -> dict[str, str]:
        """Terms used without their explanation, each with the text that used it."""
        missing: dict[str, str] = {}
        for text, tooltip in self.texts:
            text = squash(text)
            for removed in [*GLOSSARY.values(), *self.names]:
                text = text.replace(squash(removed), " ")
            for term in terms_in(text):
                if term not in missing and not self.explains(term, tooltip):
                    missing[term] = text[:140]
        return missing


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


def picture_text(url: str) -> list[str]:
    """What a server-drawn SVG chart writes on screen (its titles, axes and legend)."""
    svg = svg_from_url(url)
    if svg is None:
        return []
    return [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text") if t.text]


def shown_value(widget) -> list[str]:
    """The option text a widget displays: the chosen one of a select box, every one of a radio."""
    proto = widget.proto
    options = [getattr(o, "content", o) for o in getattr(proto, "options", [])]
    kind = type(widget).__name__
    if kind in ("Radio", "ButtonGroup"):
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
    if children is not None:  # a block: an expander's label is text, a tab's is navigation
        if type(node).__name__ == "Expander":
            screen.add(node.label)
        for key in sorted(children):
            read(children[key], screen)
        return
    proto, kind = node.proto, type(node).__name__
    tooltip = getattr(proto, "help", "")
    if kind in WIDGETS:
        for text in [getattr(proto, "label", ""), *shown_value(node)]:
            screen.add(text, tooltip)
        return
    for name in ("body", "label", "text"):
        value = getattr(proto, name, "")
        if isinstance(value, str):
            screen.add(value, tooltip)
    if kind == "Image":
        for image in proto.imgs:
            screen.add(image.caption)
            screen.add(" ".join(picture_text(image.url)))
    spec = getattr(proto, "spec", "")
    if isinstance(spec, str) and spec.startswith("{"):
        for text in chart_text(spec):
            screen.add(text)


def screen_of(at: AppTest) -> Screen:
    screen = Screen()
    for record in RunStore().list_runs():
        screen.names += [run_name(record.config), record.id]
    screen.names.sort(key=len, reverse=True)  # a longer name first: it may contain a shorter one
    read(at.main, screen)
    return screen


@pytest.fixture(scope="module")
def runs(mnist) -> Iterator[dict[str, str]]:
    """A finished linear and cnn-fast run with a validation split, trained here on 2,000 images."""
    small = Mnist(mnist.train_images[:2000], mnist.train_labels[:2000], mnist.test_images[:300],
                  mnist.test_labels[:300], source=mnist.source, folder=mnist.folder)
    store = RunStore()
    ids, created = {}, []
    for model in ("linear", "cnn-fast"):
        config = TrainConfig(model=model, epochs=2, batch_size=64, lr=3e-3, val_split=0.1, seed=SEED,
                             device="cpu")
        if store.get_run(run_id_for(config)) is None:
            assert train_here(store, config, small) == "finished"
            created.append(run_id_for(config))
        ids[model] = run_id_for(config)
    yield ids
    for run_id in created:  # the store is the test process's: later page tests pick "the best run" from it
        store.delete_run(run_id)


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
    ("sweeps", "pages/sweeps.py", None, {}),
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
    assert screen.texts, f"{view}: nothing read from the page"
    missing = screen.undefined()
    assert not missing, f"{view}: terms used but not explained:\n" + "\n".join(
        f"  {term}, in: {where!r}" for term, where in sorted(missing.items()))


def test_notes_explain_each_named_term_except_those_skipped():
    text = "Two 5x5 conv layers with batch-norm"
    assert f"**{ENTRIES['batch_norm'].title}**" in notes(text)
    assert "convolution" in terms_in(text)
    skipped = notes(text, skip=("convolution",))
    assert f"**{ENTRIES['batch_norm'].title}**" in skipped
    assert f"**{ENTRIES['convolution'].title}**" not in skipped
