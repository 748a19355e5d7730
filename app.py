"""Entry point: `streamlit run app.py`. Declares the pages and the shared sidebar."""

import streamlit as st

from pages.common import sidebar

st.set_page_config(page_title="MNIST learning dashboard", page_icon="✍️", layout="wide")

navigation = st.navigation(
    {
        "Data": [
            st.Page("pages/home.py", title="Start here", icon="🏠", default=True),
            st.Page("pages/dataset.py", title="Dataset", icon="🔢"),
            st.Page("pages/mean_images.py", title="Mean images", icon="🌫️"),
        ],
        "Models": [
            st.Page("pages/train.py", title="Train", icon="🏋️"),
            st.Page("pages/evaluate.py", title="Evaluate", icon="📊"),
            st.Page("pages/compare.py", title="Compare", icon="⚖️"),
        ],
        "Play": [
            st.Page("pages/draw.py", title="Draw", icon="✏️"),
            st.Page("pages/inside.py", title="Inside the network", icon="🔬"),
        ],
    }
)
sidebar()
navigation.run()
