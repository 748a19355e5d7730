"""Shell helpers shared by every page: process-wide resources, the sidebar, the data guard.

Resources live in `st.cache_resource`, so the data, the run store and the training queue exist
once per server process, shared by all browser sessions, never once per session.
"""

from __future__ import annotations

import ast
import gc
import importlib
import threading
import time
from pathlib import Path

import streamlit as st

from mnist_core.service import access
from mnist_core.teach import summaries
from mnist_core.service.access import Person
from mnist_core.settings import Limits
from mnist_core.engine.data import (
    MAX_UPLOAD_FILE_BYTES,
    DataError,
    DataMissing,
    Mnist,
    default_cache_dir,
    describe_data,
    install_files,
    load_mnist,
    log_refusal,
)
from mnist_core.engine.device import describe_device
from mnist_core.teach.glossary import explain
from mnist_core.service.history import visible_runs
from mnist_core.service.job_queue import JobQueue
from mnist_core.service.results import finished_runs
from mnist_core.service.store import RunRecord, RunStore
from mnist_core.teach.text import plain, report
from pages.streamlit_shim import navigate_with_app_only


@st.cache_resource(show_spinner="Opening the run store…")
def get_store() -> RunStore:
    return RunStore()


@st.cache_resource(show_spinner=False)
def warm_summaries(source: str) -> threading.Thread | None:
    """Start computing the data pages' figures in the background, once per server and source."""
    data = load_data()
    return summaries.warm(data) if data is not None else None


@st.cache_resource(show_spinner=False)
def get_queue() -> JobQueue:
    """This server's handle on training: created once (at the first visit, by the sidebar), it
    recovers runs of dead processes and starts the warm workers before anyone presses Launch."""
    return JobQueue(get_store())


def load_data() -> Mnist | None:
    """MNIST if it is available locally (loaded once per process), else None; why not goes to
    the server's log, once per reason."""
    try:
        return load_mnist(allow_download=False)
    except DataError as err:
        log_refusal(err)
        return None


PAGES_DIR = Path(__file__).resolve().parent


def page_imports() -> list[str]:
    """Every module that a page file imports, read from the files themselves (so the list
    cannot go stale), in first-seen order."""
    names: dict[str, None] = {}
    for page in sorted(PAGES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(page.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(dict.fromkeys(alias.name for alias in node.names))
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names[node.module] = None
    return [name for name in names if name != "__future__"]


def warm_up(wait_s: float = 90.0) -> dict[str, float]:
    """Do before the first visit what its visitor would otherwise wait for; app.py runs this
    while the server starts, before it accepts anyone.

    Importing torch alone takes 2-4 s on a small machine; then the data, the run store, the
    trainers (up and waiting) and the data pages' figures. Returns seconds per phase for the
    server's log. A wrong setting raises SettingError before anything starts; missing data skips
    the figures (the pages offer the upload).
    """
    from mnist_core.settings import check_settings

    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        seconds[name] = now - start
        start = now

    check_settings()
    # Beside a pages/ folder, Streamlit would serve a first deep link (/evaluate) in its legacy
    # folder mode, the bare page without app.py's navigation; app.py always navigates.
    navigate_with_app_only()
    for name in page_imports():
        importlib.import_module(name)
    import plotly.express as px  # its figure machinery loads lazily, at the first figure

    px.imshow([[0.0, 1.0]]).to_json()
    phase("imports")
    data = load_data()
    phase("data")
    queue = get_queue()  # the run store, runs of dead processes recovered, the trainers started
    warming = warm_summaries(data.source) if data is not None else None
    if warming is not None:
        warming.join(wait_s)
    phase("figures")
    deadline = time.monotonic() + wait_s
    if getattr(queue.pool, "backend", "") != "ray":  # a cluster's actors warm up on their own
        while queue.pool.ready() < queue.pool.count and time.monotonic() < deadline:
            time.sleep(0.1)
    phase("trainers")
    settle_heap()
    return seconds


def settle_heap() -> None:
    """Collect the start-up's garbage, then freeze what is left (the modules of torch, Plotly,
    pandas, Streamlit and this app: about 325,000 objects) out of the garbage collector's sight.

    Streamlit runs a full collection after every script run, a Train page's poll included, and
    over that heap one took 150 ms of the server's CPU, all of it holding the GIL: 8 tabs
    watching a run cost the server 0.4-0.5 of a core, mostly this. Frozen objects are still
    freed when nothing refers to them; only cycles among them would stay, and the start-up
    leaves none behind (collected just before).
    """
    gc.collect()
    gc.freeze()


VISITOR_COOKIE = "mnist_visitor"  # a random token naming this browser; its name is in the store
TOKEN_KEY = "visitor_token"  # session_state: the token, once this session has one
TEACHER_KEY = "is_teacher"  # session_state: the teacher's passphrase was given in this session


def secret(name: str) -> object:
    """A value from .streamlit/secrets.toml, or None when there is no such file or key."""
    try:
        return st.secrets.get(name)
    except Exception:  # no secrets file at all: Streamlit raises rather than returning nothing
        return None


def login_configured() -> bool:
    """The deployment set up Streamlit's OIDC login (`[auth]` in secrets): use it, not names."""
    return bool(secret("auth"))


def visitor_token() -> str | None:
    token = st.session_state.get(TOKEN_KEY) or st.context.cookies.get(VISITOR_COOKIE)
    return token if access.valid_token(token) else None


def current_person() -> Person:
    """Who this session is: the login's verified e-mail when the deployment has a login, else
    the name this browser claimed (remembered across reloads and tabs by a cookie)."""
    if login_configured():
        if not st.user.is_logged_in:
            return access.ANONYMOUS
        try:
            return access.person_from_login(st.user.to_dict())
        except access.NotAllowed:
            return access.ANONYMOUS
    return access.person_for_token(get_store(), visitor_token(), teacher=bool(st.session_state.get(TEACHER_KEY)))


def write_cookie() -> None:
    """Put this session's new token into a year-long cookie, which later tabs and reloads send.
    Drawn at every run of a session that made a token (cookies are read at connection only)."""
    token = st.session_state.get(TOKEN_KEY)
    if access.valid_token(token) and st.context.cookies.get(VISITOR_COOKIE) != token:
        st.html(
            f"<script>document.cookie = '{VISITOR_COOKIE}={token}; path=/; max-age=31536000; SameSite=Lax';</script>",
            unsafe_allow_javascript=True,
        )


def claim_for_session(typed: str) -> Person:
    """Give this browser the typed name (access.NotAllowed says why not); the visitor now."""
    token = visitor_token() or access.new_token()
    access.claim_name(get_store(), typed, token)
    st.session_state[TOKEN_KEY] = token
    return current_person()


def identity_panel() -> None:
    """Sidebar: sign in (login deployments) or give a name; the teacher's passphrase."""
    if login_configured():
        if st.user.is_logged_in:
            person = current_person()
            st.caption("Signed in as")
            st.text(person.name + (" (teacher)" if person.teacher else ""))
            st.button("Log out", on_click=st.logout, key="identity_logout")
        else:
            st.button("Log in", on_click=st.login, key="identity_login", type="primary",
                      help="This class's dashboard asks who you are, so your runs carry your name.")
        return
    person = current_person()
    if person.known:
        st.caption("You are")
        st.text(person.name + (" (teacher)" if person.teacher else ""))
    with st.popover("Change your name" if person.known else "Give your name", width="stretch"):
        typed = st.text_input("Your name, shown on your runs", max_chars=access.NAME_MAX, key="identity_name",
                              help="Letters, digits, spaces, dots, hyphens. This browser keeps it; nobody "
                                   "else on this server can take it.")
        if st.button("Use this name", key="identity_claim", type="primary"):
            try:
                claim_for_session(typed)
            except access.NotAllowed as err:
                st.error(plain(err))
            else:
                st.rerun()
    passphrase = secret("teacher_passphrase")
    if passphrase and not person.teacher:
        with st.expander("Teacher"):
            given = st.text_input("Teacher's passphrase", type="password", key="identity_passphrase")
            if given:
                if access.passphrase_matches(given, passphrase):
                    st.session_state[TEACHER_KEY] = True
                    st.rerun()
                st.error("That is not the teacher's passphrase.")


def limits() -> Limits:
    return Limits.from_env()


def sidebar(sections: dict[str, list] | None = None) -> None:
    """The navigation (`sections`: heading -> st.Page list) and the server's state."""
    if sections:
        with st.sidebar:
            for heading, section_pages in sections.items():
                st.caption(heading)
                for page in section_pages:
                    st.page_link(page)
            st.divider()
    try:
        get_queue()  # workers warm up while the visitor reads the first page
    except Exception as err:  # an unwritable runs folder, a newer database: the operator's problem
        st.error(report("The run store on this server cannot be opened, so this dashboard cannot work", err))
        st.stop()
    data = load_data()
    if data is not None:
        warm_summaries(data.source)
    with st.sidebar:
        st.caption("Data: " + (describe_data(data) if data else "not available — see any page"))
        st.caption("Compute: " + describe_device())
        queue = get_queue()
        ready, count = queue.pool.ready(), queue.pool.count
        where = " on the Ray cluster" if getattr(queue.pool, "backend", "") == "ray" else ""
        st.caption(f"Trainers{where}: {ready} of {count} ready" if ready < count else
                   f"Trainers{where}: {count} ready" if count > 1 or where else "Trainer: ready")
        if queue.cluster_problem:
            st.caption(queue.cluster_problem)
        st.caption(f"Stored runs: {get_store().count()}")
        identity_panel()
        write_cookie()
        if limits().read_only:
            st.caption("Read-only demo: training is switched off.")


def require_data() -> Mnist:
    """Return MNIST, or say in a visitor's words why not (the whole reason goes to the server's
    log), offer the uploader and stop the page."""
    try:
        return load_mnist(allow_download=False)
    except DataError as err:
        problem = err
    log_refusal(problem)
    if isinstance(problem, DataMissing):
        st.error(
            "MNIST was not found on this server. The operator can set the environment variable "
            "`MNIST_DATA_DIR` to a folder holding the four IDX files (raw or `.gz`) and restart, "
            "or put them in the data folder configured on the server; or upload them here."
        )
    else:
        st.error(problem.public)
    if limits().read_only:
        st.info("This is a read-only demo: it takes no uploads or downloads.")
        st.stop()
    uploads = st.file_uploader(
        f"The four MNIST files (train/t10k images and labels, raw or .gz; at most "
        f"{MAX_UPLOAD_FILE_BYTES // 2**20} MB each)",
        accept_multiple_files=True, key="mnist_upload", max_upload_size=MAX_UPLOAD_FILE_BYTES // 2**20,
    )
    if uploads and st.button("Verify and store", type="primary"):
        try:
            # Views of the uploaded bytes, not copies: the core refuses too many or too large first.
            stored = install_files(
                {f.name: f.getbuffer() for f in uploads}, default_cache_dir(), read_only=limits().read_only
            )
        except DataError as err:
            log_refusal(err)
            st.error("Nothing was stored.")
            st.text(err.public)  # as text, never markdown: it may quote the visitor's file names
        else:
            st.success(f"Stored {', '.join(stored)}.")
            try:
                load_mnist(allow_download=False)
            except DataMissing:
                st.info("Upload the remaining files to complete the set.")
            except DataError as err:
                log_refusal(err)
                st.error(err.public)
            else:
                st.rerun()
    if st.button("Try to download from torchvision's mirrors"):
        with st.spinner("Downloading…"):
            try:
                load_mnist()
            except DataError as err:
                log_refusal(err)
                st.error(err.public)
            else:
                st.rerun()
    st.stop()


SCOPES = {"everyone": "Everyone's runs", "mine": "My runs"}


def scope_owner(key: str) -> str | None:
    """A "my runs / everyone's" switch: the owner to filter on, or None for everyone."""
    person = current_person()
    choice = st.segmented_control(
        "Runs shown", list(SCOPES), format_func=SCOPES.get, default="everyone", key=key,
        help="Your own runs only, or every run trained on this server. The teacher's pinned "
             "reference run is always listed first." + ("" if person.known else " Give your name to see yours."),
    )
    return person.name if choice == "mine" else None


def require_finished_runs(no_runs_hint: str, scope_key: str | None = None) -> list[RunRecord]:
    """Finished runs with weights, best first (the pinned reference run first of all), limited to
    the visitor's own with a "my runs" switch; without any, say how to train one and stop."""
    everyone = finished_runs(get_store())
    runs = everyone
    if scope_key is not None and everyone:
        runs = visible_runs(everyone, scope_owner(scope_key), access.pinned_run(get_store()))
    if not runs:
        whose = "of yours " if everyone else ""
        st.info(f"There is no trained model {whose}yet. {no_runs_hint}")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        st.stop()
    return runs


def help_text(term: str) -> str:
    return explain(term)
