# Two commands for a newcomer: `make run` starts the dashboard, `make test` runs every test.
# Both create ./.venv and install requirements on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export MNIST_DATA_DIR ?= $(if $(wildcard ../shared/mnist),$(abspath ../shared/mnist),)

$(VENV)/.installed: requirements.txt requirements-cluster.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

.PHONY: run test bench
run: $(VENV)/.installed
	$(PY) -m streamlit run app.py

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m mnist_core.bench
