# mlsuite: `make demo` runs the whole suite embedded; `make test` runs the tests.
# Both create .venv and install into it when needed; only python3 (>= 3.11) and make are required.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export OPENBLAS_NUM_THREADS := 1

.PHONY: help demo test bench loadtest lint clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing mlsuite and its dependencies into $(VENV) (first run: about a minute)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e ".[dev]"
	@touch $@

demo: $(STAMP)  ## simulate data, start Redis, Feast, train, serve both services (Ctrl-C stops)
	$(BIN)/mlsuite demo

test: $(STAMP)  ## run the test suite (real Redis, real Feast, real models)
	$(BIN)/python -m pytest

bench: $(STAMP)  ## measure both services against a bare Flask baseline on this machine
	$(BIN)/mlsuite bench --json reports/bench.json

loadtest: $(STAMP)  ## headless Locust runs against both services, CSV + HTML in reports/
	$(BIN)/mlsuite loadtest

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check platform apps tests loadtests
	$(BIN)/mypy platform/mlplatform

clean:  ## remove the virtualenv, data and reports
	rm -rf $(VENV) data reports
