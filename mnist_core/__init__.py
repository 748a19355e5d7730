"""mnist_core: the functional core of the MNIST learning dashboard (no Streamlit in here)."""

__version__ = "0.1.0"
