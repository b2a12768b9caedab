# Two commands: `make run` (the lab on this machine) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install worker bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[worker,test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m backend.launch

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m worker.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
