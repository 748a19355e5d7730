"""Entry point: `streamlit run app.py`. Declares the pages and the shared sidebar."""

import os

# Before torch loads (pages.common imports it): OpenMP threads that spin while waiting steal the
# cores the training workers need on a small machine. See mnist_core/workers.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import signal  # noqa: E402
import sys  # noqa: E402

import streamlit as st  # noqa: E402

from mnist_core.config import SettingError, check_settings  # noqa: E402
from pages.common import sidebar  # noqa: E402

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
SECTIONS = (
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
navigation = st.navigation(SECTIONS, position="hidden")
sidebar(SECTIONS)
navigation.run()
