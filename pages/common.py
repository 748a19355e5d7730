"""Shell helpers shared by every page: process-wide resources, the sidebar, the data guard.

Resources live in `st.cache_resource`, so the data, the run store and the training queue exist
once per server process, shared by all browser sessions, never once per session.
"""

from __future__ import annotations

import uuid

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from mnist_core import summaries
from mnist_core.config import Limits
from mnist_core.data import DataError, Mnist, default_cache_dir, install_files, load_mnist
from mnist_core.device import describe_device
from mnist_core.glossary import explain
from mnist_core.jobs import JobQueue
from mnist_core.predict import finished_runs
from mnist_core.runs import RunRecord, RunStore


def route_through_app() -> None:
    """Make a deep link opened on a fresh server run app.py's navigation, not the bare page.

    Because a `pages/` folder sits beside app.py, Streamlit starts in its legacy folder mode
    until app.py's `st.navigation` has run once; a first visitor of /evaluate would get the page
    without the sidebar or layout. Leaving that mode and rerunning sends the same URL through
    app.py (page ids are derived from the URL path in both modes).
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


@st.cache_resource(show_spinner="Opening the run store…")
def get_store() -> RunStore:
    return RunStore()


@st.cache_resource(show_spinner=False)
def warm_summaries(source: str) -> None:
    """Start computing the data pages' figures in the background, once per server and source."""
    data = load_data()
    if data is not None:
        summaries.warm(data)


@st.cache_resource(show_spinner=False)
def get_queue() -> JobQueue:
    """This server's handle on training: created once (at the first visit, by the sidebar), it
    recovers runs of dead processes and starts the warm workers before anyone presses Launch."""
    return JobQueue(get_store())


def load_data() -> Mnist | None:
    """MNIST if it is available locally (loaded once per process), else None."""
    try:
        return load_mnist(allow_download=False)
    except DataError:
        return None


def session_id() -> str:
    """A random id per browser session, to count its queued jobs against the limits."""
    if "session_id" not in st.session_state:
        st.session_state.session_id = uuid.uuid4().hex
    return st.session_state.session_id


def limits() -> Limits:
    return Limits.from_env()


def sidebar() -> None:
    get_queue()  # workers warm up while the visitor reads the first page
    data = load_data()
    if data is not None:
        warm_summaries(data.source)
    with st.sidebar:
        st.caption("Data: " + (data.source if data else "not found — see any page"))
        st.caption("Compute: " + describe_device())
        queue = get_queue()
        ready, count = queue.pool.ready(), queue.pool.count
        st.caption(f"Trainers: {ready} of {count} ready" if ready < count else
                   f"Trainers: {count} ready" if count > 1 else "Trainer: ready")
        st.caption(f"Stored runs: {get_store().count()}")
        if limits().read_only:
            st.caption("Read-only demo: training is switched off.")


def require_data() -> Mnist:
    """Return MNIST or show the same fix on every page (uploader included) and stop the page."""
    data = load_data()
    if data is not None:
        return data
    st.error(
        "MNIST was not found. Set the environment variable `MNIST_DATA_DIR` to a folder holding "
        "the four IDX files (raw or `.gz`) and restart, or put them in "
        f"`{default_cache_dir()}`, or upload them here."
    )
    uploads = st.file_uploader(
        "The four MNIST files (train/t10k images and labels, raw or .gz)",
        accept_multiple_files=True, key="mnist_upload",
    )
    if uploads and st.button("Verify and store", type="primary"):
        try:
            stored = install_files({f.name: f.getvalue() for f in uploads}, default_cache_dir())
        except DataError as err:
            st.error(f"Nothing was stored: {err}")
        else:
            st.success(f"Stored {', '.join(stored)}.")
            if load_data() is not None:
                st.rerun()
            st.info("Upload the remaining files to complete the set.")
    if st.button("Try to download from torchvision's mirrors"):
        with st.spinner("Downloading…"):
            try:
                load_mnist()
                st.rerun()
            except DataError as err:
                st.error(str(err))
    st.stop()


def require_finished_runs(no_runs_hint: str) -> list[RunRecord]:
    """Finished runs with weights, best first; without any, say how to train one and stop."""
    runs = finished_runs(get_store())
    if not runs:
        st.info(f"There is no trained model yet. {no_runs_hint}")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        st.stop()
    return runs


def help_text(term: str) -> str:
    return explain(term)


# Last, so a session importing this module concurrently never sees it half-defined.
route_through_app()
