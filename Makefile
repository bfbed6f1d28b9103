# Quick start: `make demo` (train the MNIST-1D CNN) and `make test` (the whole suite).
# Both create .venv on first use and reuse it after (re-installed when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench api-docs config-docs clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/mbx train --config configs/mnist1d_cnn.py

# Two pytest workers, one test file each at a time (pytest-xdist): most tests compile and
# train, so two processes keep both cores of a small machine busy.
TEST_WORKERS ?= 2

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m 'not slow'

bench: $(VENV)/.installed
	$(BIN)/python experiments/bench_step.py

# The Python API reference, from the docstrings, into docs/api/ (open docs/api/index.html).
api-docs: $(VENV)/.installed
	$(BIN)/python -m mbx.api_docs docs/api

# docs/config_reference.md, from the config dataclasses' field docstrings (committed; a test
# checks it is current).
config-docs: $(VENV)/.installed
	$(BIN)/python -m mbx.config_docs docs/config_reference.md

clean:
	rm -rf $(VENV) runs sweeps .pytest_cache
