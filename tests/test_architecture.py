"""The code's shape, checked so that it stays the shape a newcomer was promised: wings that
import only downwards with no cycle (import-linter's contracts in pyproject.toml), a short top
folder, no module too long to read, and private API only in the speed wing and the shim."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "mnist_core"
SHELL = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]
MAX_LINES = 500
# The one place each of these may use private API: the speed wing behind its probes, the shell's
# shim for the Streamlit setting that has no public switch, and the bench's imitation of a browser
# tab, which speaks Streamlit's wire protocol (its protobuf messages) by design.
PRIVATE_ALLOWED = (CORE / "speed", ROOT / "pages" / "streamlit_shim.py", CORE / "bench" / "remote_tabs.py")
# Streamlit's documented modules; any other `streamlit.x` is its internals.
STREAMLIT_PUBLIC = {"streamlit", "streamlit.components.v1", "streamlit.components.v2", "streamlit.testing.v1"}
# Modules whose `_names` are someone else's internals (our own `self._x` are not).
FOREIGN = {"torch", "streamlit", "atexit", "sys", "os", "threading", "sqlite3", "numpy", "pandas", "plotly", "ray"}


def sources() -> list[Path]:
    return [*sorted(CORE.rglob("*.py")), *SHELL]


def test_the_import_contracts_are_kept():
    """pyproject.toml's contracts: layers, no cycle at any depth (imports inside functions
    count), no Streamlit in the core, the engine through the speed seam only. In a process of
    its own: import-linter reconfigures logging, which would silence other tests' log checks."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.count("KEPT") == 4, done.stdout


def test_the_top_folder_holds_at_most_eight_files():
    files = sorted(p.name for p in CORE.iterdir() if p.is_file() and p.suffix == ".py")
    assert len(files) <= 8, files


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def private_module(name: str) -> bool:
    """A foreign module path with a `_part`, or a Streamlit module outside its documented API."""
    parts = name.split(".")
    if parts[0] == "streamlit" and name not in STREAMLIT_PUBLIC:
        return True
    return parts[0] in FOREIGN and any(p.startswith("_") and not p.startswith("__") for p in parts[1:])


def foreign_private_uses(path: Path) -> list[str]:
    """`module._name` where module is a foreign package imported in `path`, `from foreign import
    _name`, `import foreign._x`, and Streamlit's internal modules; dunder names (`__file__`) are
    public."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name.split(".")[0]
                if private_module(alias.name):
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in FOREIGN:
                for alias in node.names:
                    aliases[alias.asname or alias.name] = top
                    if private_module(node.module) or (alias.name.startswith("_") and not alias.name.startswith("__")):
                        found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and aliases.get(base.id) in FOREIGN and node.attr != "_exit":
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", [p for p in sources() if not any(p.is_relative_to(a) for a in PRIVATE_ALLOWED)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_api_outside_the_speed_wing_and_the_shim(path):
    assert foreign_private_uses(path) == []


def test_the_private_api_check_finds_what_it_looks_for(tmp_path):
    """The check itself, on code that does each thing it must catch and a few it must not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import atexit\nimport torch as t\nfrom streamlit.runtime.pages_manager import PagesManager\n"
        "from torch.optim import _functional\nimport os\nimport torch._dynamo\n"
        "atexit._run_exitfuncs()\nt._foreach_add_([], 1)\nos._exit(0)\nprint(t.__version__)\n"
        "class A:\n    def f(self):\n        return self._x\n"
        "import streamlit as st\nfrom streamlit.components.v2 import component\nst.components.v2.component('x')\n"
    )
    assert foreign_private_uses(sample) == [
        "line 3: from streamlit.runtime.pages_manager import PagesManager",
        "line 4: from torch.optim import _functional", "line 6: import torch._dynamo",
        "line 7: atexit._run_exitfuncs", "line 8: t._foreach_add_",
    ]
