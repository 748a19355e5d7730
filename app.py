"""Entry point: `streamlit run app.py`.

This file has two roles. `streamlit run` first imports it as a module and finds `app` at the end:
the server, which warms the process up (torch, the data, the trainers, the data pages' figures)
before it accepts the first visitor, so nobody waits seconds for imports. Streamlit then runs the
file as the page script (`__main__`) at every visit: the pages and the shared sidebar.
"""

import os

# Before torch loads (pages.common imports it): OpenMP threads that spin while waiting steal the
# cores the training workers need on a small machine. See mnist_core/service/workers.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import asyncio  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402

import streamlit as st  # noqa: E402


def serve_pages() -> None:
    """One visit's script run: settings check, navigation, sidebar, the chosen page."""
    from mnist_core.settings import SettingError, check_settings
    from pages.common import sidebar

    st.set_page_config(page_title="MNIST learning dashboard", page_icon=":material/edit:", layout="wide")

    try:
        check_settings()
    except SettingError as err:  # the operator reads why in the log; visitors learn nothing internal
        print(f"MNIST dashboard: stopping the server: wrong setting {err}", file=sys.stderr, flush=True)
        st.error("This dashboard is misconfigured and has stopped. Its operator has been told why.")
        os.kill(os.getpid(), signal.SIGTERM)
        st.stop()

    # The sidebar draws these links itself (pages.common.sidebar): with Streamlit's own navigation
    # switched off (.streamlit/config.toml), a first visit never flashes the raw file names of
    # pages/ while the app starts.
    sections = (
        {
            "Data": [
                st.Page("pages/home.py", title="Start here", icon=":material/home:", default=True),
                st.Page("pages/dataset.py", title="Dataset", icon=":material/grid_view:"),
                st.Page("pages/mean_images.py", title="Mean images", icon=":material/blur_on:"),
            ],
            "Models": [
                st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
                st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
                st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
                st.Page("pages/sweeps.py", title="Sweeps", icon=":material/tune:"),
            ],
            "Play": [
                st.Page("pages/draw.py", title="Draw", icon=":material/draw:"),
                st.Page("pages/inside.py", title="Inside the network", icon=":material/biotech:"),
            ],
        }
    )
    navigation = st.navigation(sections, position="hidden")
    sidebar(sections)
    navigation.run()


@asynccontextmanager
async def warm_start(_app: object) -> AsyncIterator[None]:
    """The server's start-up: the first visitor's waiting, done before anyone is let in."""
    from mnist_core.settings import SettingError
    from pages.common import warm_up

    try:
        seconds = await asyncio.to_thread(warm_up)
    except SettingError as err:  # stop at once, before anyone visits: the log says why
        print(f"MNIST dashboard: stopping the server: wrong setting {err}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    phases = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    print(f"MNIST dashboard: warmed up before the first visit ({phases})", file=sys.stderr, flush=True)
    yield


if __name__ == "__main__":
    serve_pages()
else:
    app = st.App(__file__, lifespan=warm_start)
