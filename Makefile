# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install run rebalance test bench lint format clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# `make run NODES=3`: a third local node; a REDIS_NODES you set is used as it is.
run: install
	$(PY) -m app.devtools.run_local

# `make rebalance ARGS=--dry-run`: what a ring change would move, on the nodes `make run`
# starts (NODES, REDIS_NODES); they are started for it and stopped after (docs/operations.md).
rebalance: install
	$(PY) -m app.devtools.run_local rebalance $(ARGS)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m bench.run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .data bench/results .pytest_cache .mypy_cache .ruff_cache
