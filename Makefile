# One virtualenv in .venv; every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'

demo: install
	$(BIN)/retrain demo

lint: install
	$(BIN)/ruff check retrain registry flows gateway deploy tests bench
	$(BIN)/ruff format --check retrain registry flows gateway deploy tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

# the suite waits on servers more than it computes: three test processes on two cores
# (one file per process at a time: module-scoped servers start once)
TEST_WORKERS ?= 3

test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=15
