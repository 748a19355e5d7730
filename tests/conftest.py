"""Shared fixtures. Every test process gets its own run store, so tests never touch ./runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before any page or store is imported: pages open the store from this variable.
os.environ.setdefault("MNIST_RUNS_DIR", tempfile.mkdtemp(prefix="mnist-test-runs-"))
os.environ.setdefault("MNIST_CACHE_DIR", tempfile.mkdtemp(prefix="mnist-test-cache-"))
os.environ["MNIST_NO_DOWNLOAD"] = "1"

ROOT = Path(__file__).resolve().parent.parent
SVG_URL = "data:image/svg+xml;base64,"
# Printed at the top of every test run, so a CI log says which versions the tests passed with.
REPORTED_PACKAGES = ("torch", "torchvision", "streamlit", "numpy", "pandas", "plotly", "pillow", "safetensors",
                     "scikit-learn", "ray", "playwright", "import-linter")


def pytest_report_header(config) -> str:
    """One line: the Python and the installed versions of the packages the tests exercise."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return "versions: " + ", ".join([f"python {platform.python_version()}",
                                     *(f"{name} {installed(name)}" for name in REPORTED_PACKAGES)])


def svg_from_url(url: str) -> str | None:
    """The SVG document behind an st.image URL (Streamlit sends SVG as a base64 data URL)."""
    import base64

    return base64.b64decode(url[len(SVG_URL):]).decode() if url.startswith(SVG_URL) else None


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST set from MNIST_DATA_DIR; tests that need it are skipped without it."""
    if not os.environ.get("MNIST_DATA_DIR"):
        pytest.skip("MNIST_DATA_DIR is not set")
    from mnist_core.engine.data import load_mnist

    return load_mnist(allow_download=False)


@pytest.fixture()
def store(tmp_path):
    from mnist_core.service.store import RunStore

    return RunStore(tmp_path / "runs")
