"""The shell's one use of Streamlit's private API (pages/streamlit_shim.py) still works with the
installed Streamlit: an upgrade that removes or renames it fails here, in CI, not in a classroom.
(That nothing else reaches into Streamlit's internals is tests/test_architecture.py's check.)
"""

from __future__ import annotations

import pytest



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
