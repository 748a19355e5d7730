"""The shell's one use of Streamlit's private API (pages/streamlit_shim.py) still works with the
installed Streamlit: an upgrade that removes or renames it fails here, in CI, not in a classroom.

Also that no other page, nor app.py, reaches into Streamlit's internals.
"""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT


@pytest.fixture()
def pages_manager():
    """Streamlit's PagesManager, with the mode flag put back as it was after the test."""
    from streamlit.runtime.pages_manager import PagesManager

    before = PagesManager.__dict__.get("uses_pages_directory", None)
    yield PagesManager
    PagesManager.uses_pages_directory = before


def test_streamlit_still_has_the_legacy_pages_mode_flag(pages_manager) -> None:
    """The shim sets a class attribute Streamlit reads to choose the legacy `pages/` folder mode.
    If this fails, Streamlit changed how it picks that mode: see the shim's docstring for what
    to do (a public switch may exist now)."""
    assert hasattr(pages_manager, "uses_pages_directory")
    assert "uses_pages_directory" in vars(pages_manager)  # the class's own attribute, read as such


def test_the_shim_switches_the_legacy_pages_mode_off(pages_manager) -> None:
    from pages.streamlit_shim import navigate_with_app_only

    pages_manager.uses_pages_directory = True
    navigate_with_app_only()
    assert pages_manager.uses_pages_directory is False


def test_a_new_pages_manager_keeps_the_mode_the_shim_chose(pages_manager, tmp_path) -> None:
    """Beside a pages/ folder, a session's PagesManager would choose the legacy mode, unless the
    shim has already decided: the flag is only filled in when nobody set it."""
    from pages.streamlit_shim import navigate_with_app_only

    (tmp_path / "pages").mkdir()
    main = tmp_path / "app.py"
    main.write_text("")
    pages_manager.uses_pages_directory = None
    pages_manager(str(main))
    assert pages_manager.uses_pages_directory is True  # what the shim is there to prevent
    navigate_with_app_only()
    pages_manager(str(main))
    assert pages_manager.uses_pages_directory is False


def private_streamlit_uses(source: str) -> list[str]:
    """Imports of Streamlit modules other than the public `streamlit` and its documented
    `components` and `testing` packages, and any `_private` attribute read off an import."""
    found: list[str] = []
    tree = ast.parse(source)
    public = ("streamlit", "streamlit.components.v1", "streamlit.components.v2", "streamlit.testing.v1")
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported.add((alias.asname or alias.name).split(".")[0])
                if alias.name.startswith("streamlit") and alias.name not in public:
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                imported.add(alias.asname or alias.name)
            if node.module.startswith("streamlit") and node.module not in public:
                found.append(f"line {node.lineno}: from {node.module} import ...")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            while isinstance(owner, ast.Attribute):
                owner = owner.value
            if isinstance(owner, ast.Name) and owner.id in imported:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scanner_finds_private_streamlit() -> None:
    assert private_streamlit_uses("from streamlit.runtime.pages_manager import PagesManager")
    assert private_streamlit_uses("import streamlit.runtime.scriptrunner")
    assert private_streamlit_uses("import streamlit as st\nst._main")
    assert private_streamlit_uses("import torch\ntorch._C._set_something(1)")
    assert not private_streamlit_uses("import streamlit as st\nst.components.v2.component('x')")


def test_only_the_shim_uses_private_streamlit() -> None:
    sources = sorted([*ROOT.glob("pages/*.py"), ROOT / "app.py"])
    assert ROOT / "pages" / "streamlit_shim.py" in sources
    found = {
        str(path.relative_to(ROOT)): uses for path in sources
        if path.name != "streamlit_shim.py" and (uses := private_streamlit_uses(path.read_text(encoding="utf-8")))
    }
    assert found == {}
    assert private_streamlit_uses((ROOT / "pages" / "streamlit_shim.py").read_text(encoding="utf-8"))
