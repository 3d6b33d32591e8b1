# mssante-operator — the two commands: `make run` (demo instance) and `make test` (whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/dev.toml
LINT_PATHS := $(wildcard src tests bench migrations)

.PHONY: run init serve test lint typecheck check bench clean

$(BIN)/mssante-operator: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## run: create .venv, install, prepare the demo instance (idempotent) and serve it in the foreground
run: $(BIN)/mssante-operator
	$(BIN)/mssante-operator --config $(CONFIG) init
	exec $(BIN)/mssante-operator --config $(CONFIG) serve

init: $(BIN)/mssante-operator
	$(BIN)/mssante-operator --config $(CONFIG) init

## test: the whole test suite, on SQLite and PostgreSQL (127.0.0.1:5432, database test)
test: $(BIN)/mssante-operator
	$(BIN)/pytest -n 2 --dist loadfile -q

lint: $(BIN)/mssante-operator
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(BIN)/mssante-operator
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
