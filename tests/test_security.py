"""Security: no code runs from a stored or uploaded file, user-supplied names never become paths,
and the server's own settings cap uploads and hide tracebacks.

A shared dashboard loads files that anyone with the folder (or a previous upload) may have
replaced. Pickle, and torch.load without weights_only, execute code while loading, so the source
tree must never use them, and a pickle planted where weights belong must fail to load, inertly.
"""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

from mnist_core.engine.config import TrainConfig
from mnist_core.engine.data import install_files
from mnist_core.service.jobs import execute
from mnist_core.service.lifecycle import run_id_for
from mnist_core.service.results import load_evaluation, load_run_model
from mnist_core.service.store import RunStore, RunStoreError
from tests.conftest import ROOT
from tests.synthetic import synthetic_mnist

SOURCES = sorted([*ROOT.glob("mnist_core/**/*.py"), *ROOT.glob("pages/*.py"), ROOT / "app.py"])
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


# --- the source tree ------------------------------------------------------------------------

def unsafe_loading(source: str) -> list[str]:
    """Lines of `source` that (de)serialise with pickle: pickle-family imports, torch.save,
    torch.load without weights_only=True, numpy.load with allow_pickle=True, pandas pickles."""
    aliases = {"torch": "torch", "numpy": "numpy", "pandas": "pandas"}
    findings: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for name in node.names:
                if name.name.split(".")[0] in UNSAFE_MODULES:
                    findings.append(f"line {node.lineno}: import {name.name}")
                if name.name in aliases:
                    aliases[name.asname or name.name] = name.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            imported = {name.name for name in node.names}
            if root in UNSAFE_MODULES or (root == "torch" and imported & {"load", "save"}):
                findings.append(f"line {node.lineno}: from {node.module} import {', '.join(sorted(imported))}")
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        module = aliases.get(owner.id) if isinstance(owner, ast.Name) else None
        keywords = {k.arg: k.value for k in node.keywords}

        def is_true(name: str) -> bool:
            value = keywords.get(name)
            return isinstance(value, ast.Constant) and value.value is True

        call = f"{module}.{node.func.attr}"
        if call == "torch.save" or node.func.attr in ("read_pickle", "to_pickle"):
            findings.append(f"line {node.lineno}: {ast.unparse(node.func)}(")
        elif call == "torch.load" and not is_true("weights_only"):
            findings.append(f"line {node.lineno}: torch.load( without weights_only=True")
        elif call == "numpy.load" and "allow_pickle" in keywords and not (
            isinstance(keywords["allow_pickle"], ast.Constant) and keywords["allow_pickle"].value is False
        ):
            findings.append(f"line {node.lineno}: numpy.load( with allow_pickle")
    return findings


@pytest.mark.parametrize("snippet", [
    "import pickle",
    "import dill as d",
    "from pickle import loads",
    "import torch\nstate = torch.load(path)",
    "import torch as t\nstate = t.load(path, weights_only=False)",
    "from torch import load",
    "import torch\ntorch.save(model.state_dict(), path)",
    "import numpy as np\nnp.load(path, allow_pickle=True)",
    "import pandas as pd\npd.read_pickle(path)",
    "frame.to_pickle(path)",
])
def test_the_scanner_catches_unsafe_loading(snippet: str) -> None:
    assert unsafe_loading(snippet)


def test_the_scanner_lets_safe_loading_pass() -> None:
    safe = "import torch\nstate = torch.load(path, weights_only=True)\nimport numpy as np\nnp.load(path)\n"
    assert unsafe_loading(safe + '"""Unlike pickle or torch.save(...), safetensors run no code."""') == []


def test_no_source_file_loads_or_writes_pickles() -> None:
    assert len(SOURCES) > 10 and ROOT / "mnist_core" / "service" / "store" / "tensors.py" in SOURCES
    findings = {str(path.relative_to(ROOT)): unsafe_loading(path.read_text()) for path in SOURCES}
    assert {path: found for path, found in findings.items() if found} == {}


# --- what the store writes and reads --------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[RunStore, str]:
    """A run trained and stored the way the dashboard's worker does it (tiny synthetic data)."""
    store = RunStore(tmp_path_factory.mktemp("runs"))
    config = TrainConfig(model="linear", epochs=1, batch_size=100)
    run_id = run_id_for(config)
    store.create_run(run_id, config.to_dict())
    assert execute(store, run_id, config, synthetic_mnist()) == "finished"
    return store, run_id


def test_stored_tensor_files_are_safetensors(trained) -> None:
    store, run_id = trained
    files = sorted(p for p in store.root.rglob("*") if p.is_file() and p.parent != store.root)
    assert [p.name for p in files] == ["evaluation.safetensors", "weights.safetensors"]
    state = load_run_model(store, run_id).state_dict()
    for path in files:
        raw = path.read_bytes()
        assert not raw.startswith((b"\x80", b"PK")), "a pickle or a torch.save zip"
        length = int.from_bytes(raw[:8], "little")
        assert 2 <= length <= len(raw) - 8 and raw[8:9] == b"{"
        header = json.loads(raw[8 : 8 + length])
        tensors = {key: value for key, value in header.items() if key != "__metadata__"}
        assert max(value["data_offsets"][1] for value in tensors.values()) == len(raw) - 8 - length
        if path.name == "weights.safetensors":
            assert sorted(tensors) == sorted(state)
            assert all(tensors[k]["shape"] == list(state[k].shape) for k in state)


class Exploit:
    """Unpickling this creates `marker`: proof that loading ran attacker-chosen code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("form", ["pickle", "torch.save"])
@pytest.mark.parametrize("name", ["weights", "evaluation"])
def test_a_planted_pickle_is_refused_without_running_it(trained, tmp_path, form: str, name: str) -> None:
    store, run_id = trained
    marker = tmp_path / "code-ran"
    if form == "pickle":
        payload = pickle.dumps({"linear.weight": Exploit(marker)})
    else:
        planted = tmp_path / "planted.pt"
        torch.save({"linear.weight": Exploit(marker)}, planted)
        payload = planted.read_bytes()
    pickle.loads(pickle.dumps(Exploit(tmp_path / "live")))
    assert (tmp_path / "live").exists()  # the payload is armed: unpickling it does run code

    target = store.tensor_path(run_id, name)
    original = target.read_bytes()
    target.write_bytes(payload)
    try:
        with pytest.raises(RunStoreError, match="not a readable safetensors"):
            load_run_model(store, run_id) if name == "weights" else store.load_tensors(run_id, name)
        if name == "evaluation":
            with pytest.raises(RunStoreError, match="not a readable safetensors"):
                load_evaluation(store, run_id, synthetic_mnist())
    finally:
        target.write_bytes(original)
    assert not marker.exists()


# --- names from users -----------------------------------------------------------------------

@pytest.mark.parametrize("run_id", ["../x", "../../x", "x/../../x", "/tmp/x", "..", "x\x00"])
def test_run_ids_from_users_cannot_reach_outside_the_store(tmp_path, run_id: str) -> None:
    store = RunStore(tmp_path / "runs")
    outside = tmp_path / "runs" / "x"  # where weights/../x would land: a genuine weights file
    outside.mkdir()
    safetensors.torch.save_file({"w": torch.ones(2)}, outside / "weights.safetensors")
    with pytest.raises(RunStoreError):
        load_run_model(store, run_id)
    for call in (
        store.load_weights,
        store.delete_run,
        store.tensor_names,
        lambda bad: store.has_tensors(bad, "weights"),
        lambda bad: store.save_tensors(bad, "weights", {"w": torch.zeros(2)}),
    ):
        with pytest.raises(RunStoreError, match="invalid run id"):
            call(run_id)
    assert (outside / "weights.safetensors").exists()


def test_deleting_a_run_whose_folder_is_a_symlink_keeps_the_target(tmp_path) -> None:
    store = RunStore(tmp_path / "runs")
    store.create_run("r1", TrainConfig().to_dict(), status="finished")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "weights.safetensors").write_bytes(b"keep me")
    (store.weights_dir / "r1").symlink_to(precious, target_is_directory=True)
    store.delete_run("r1")
    assert (precious / "weights.safetensors").read_bytes() == b"keep me"
    assert not (store.weights_dir / "r1").exists() and store.get_run("r1") is None


def test_upload_file_names_never_become_paths(mnist, tmp_path) -> None:
    genuine = next(Path(mnist.folder).glob("t10k-labels*")).read_bytes()
    cache = tmp_path / "a" / "b" / "cache"
    absolute = tmp_path / "absolute-evil"
    names = ["../../evil", "../../../evil.gz", str(absolute), "cache/../../evil\x00.png"]
    for name in names:
        assert install_files({name: genuine}, cache) == ["t10k-labels-idx1-ubyte"]
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["a/b/cache/t10k-labels-idx1-ubyte"]


CLI = [sys.executable, "-m", "mnist_core"]


@pytest.fixture(scope="module")
def cli_with_escaping_run_id(tmp_path_factory) -> subprocess.CompletedProcess:
    folder = tmp_path_factory.mktemp("cli")
    picture = folder / "digit.png"
    picture.write_bytes(b"not needed: the run id is refused first")
    return subprocess.run(
        CLI + ["--runs-dir", str(folder / "runs"), "predict", str(picture), "--run", "../x"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )


def test_cli_refuses_a_run_id_outside_the_store(cli_with_escaping_run_id) -> None:
    assert cli_with_escaping_run_id.returncode != 0
    assert "no run '../x'" in cli_with_escaping_run_id.stderr


def test_cli_refuses_a_bad_run_id_without_a_traceback(cli_with_escaping_run_id) -> None:
    assert "Traceback" not in cli_with_escaping_run_id.stderr


# --- server settings ------------------------------------------------------------------------

def test_streamlit_config_caps_uploads_and_hides_tracebacks() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    limit = config["server"]["maxUploadSize"]  # MB, per file
    train_images = 47_040_016  # the largest MNIST file, uncompressed: it must still fit
    assert isinstance(limit, int) and train_images / 2**20 <= limit <= 200
    assert config["server"].get("enableXsrfProtection", True) is True
    assert config["client"]["showErrorDetails"] in ("none", False)


@given(st.text(max_size=300))
def test_plain_text_leaves_no_markdown_special_unescaped(raw):
    from mnist_core.teach.text import MARKDOWN_SPECIALS, plain

    shown = plain(raw)
    i = 0
    while i < len(shown):
        if shown[i] == "\\":
            assert shown[i + 1] in MARKDOWN_SPECIALS  # an escape always escapes something
            i += 2
            continue
        assert shown[i] not in MARKDOWN_SPECIALS and shown[i] not in "\n\r\t"
        i += 1


def test_plain_text_of_a_crafted_link():
    from mnist_core.teach.text import plain

    assert plain("[x](https://e.example)") == "\\[x\\]\\(https\\:\\/\\/e\\.example\\)"
    assert plain("a" * 300).endswith("…") and len(plain("a" * 300)) == 200
