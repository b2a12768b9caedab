# `make run` (the lab on this machine); `make test` (the fast tier, before every commit: no service, browser or
# real worker) and `make test-all` (everything, as CI runs it). Tiers and markers: tests/tiers.py.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_WORKERS ?= auto

.PHONY: run test test-all lint install worker bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[worker,test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m backend.launch

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest --tier fast $(PYTEST_ARGS)

# The parallel-safe tiers on every core, then the ones that start labs of real processes one at a time.
test-all: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --tier parallel $(PYTEST_ARGS)
	$(PY) -m pytest --tier serial $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m worker.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
