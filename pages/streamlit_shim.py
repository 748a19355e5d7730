"""The shell's only use of Streamlit's private API, kept here so that there is one place to look.

Every other page and app.py use public Streamlit only. tests/test_streamlit_shim.py fails when an
upgrade of Streamlit removes or renames what this module touches, so CI catches it before a
visitor does.
"""

from __future__ import annotations

from streamlit.runtime.pages_manager import PagesManager


def navigate_with_app_only() -> None:
    """Switch off Streamlit's legacy `pages/` folder mode for this server process: app.py's
    `st.navigation` decides every page.

    Why: beside a folder called `pages/`, Streamlit (checked up to 1.67) starts each session in
    its legacy multipage mode ("MPA v1"), in which a first deep link such as /evaluate runs the
    bare file pages/evaluate.py, without app.py's navigation, sidebar and settings check; only
    once app.py has called `st.navigation` does Streamlit switch the mode off (it sets this same
    class attribute to False). The shell's folder has to be called `pages/`, and Streamlit has no
    public switch for this, so the server sets the attribute once at start-up (pages.common.warm_up),
    before anyone visits.

    What would replace it: a public config option or `st.App` argument that turns off the
    `pages/` folder detection (or a Streamlit that no longer has the legacy mode at all). Then
    delete this module, its call in pages.common and tests/test_streamlit_shim.py.
    """
    PagesManager.uses_pages_directory = False
