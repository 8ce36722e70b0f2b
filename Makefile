# athena-pipeline: one entry point for users, developers and CI.
#
#   make test   set up .venv if needed, dbt parse, validate the Dagster definitions, run pytest
#   make demo   the whole pipeline once on the sandbox, through Dagster, then a summary
#   make dev    the Dagster UI against the sandbox (emulator in the background)
#
# Variables you may override: PYTHON, PYTEST_ARGS, WORLD_ARGS (extra `sandbox generate` flags,
# e.g. WORLD_ARGS="--providers 2"), DEMO_ARGS (extra `athena-pipeline demo` flags), SANDBOX_WORLD,
# SANDBOX_PORT, WAREHOUSE_PATH.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

SANDBOX_WORLD ?= .sandbox/world
SANDBOX_PORT ?= 8765
WORLD_ARGS ?=
DEMO_ARGS ?=
PYTEST_ARGS ?= -m "not slow" -n auto --dist loadfile
export SANDBOX_WORLD SANDBOX_PORT
# dbt-duckdb opens a relative path against its working directory; an absolute path means
# `dbt --project-dir dbt_project` from here and Dagster's dbt steps open the same file.
export WAREHOUSE_PATH := $(abspath $(or $(WAREHOUSE_PATH),data/warehouse.duckdb))
# The venv's tools first: `dagster dev` re-parses the dbt project with the `dbt` it finds on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

DBT_ARGS := --project-dir dbt_project --profiles-dir dbt_project

.PHONY: help install dbt-parse validate test test-all world demo dev clean

help:
	@echo "make test      install (if needed), dbt parse, dagster definitions validate, pytest"
	@echo "make test-all  the same, including tests marked slow"
	@echo "make demo      the whole pipeline once on the sandbox (world, emulators, Dagster runs), a summary"
	@echo "make dev       the Dagster UI with the sandbox emulator running in the background"
	@echo "make clean     remove generated data (world, warehouse, Dagster home, dbt target)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The manifest Dagster builds the dbt assets from: dbt_project/target/manifest.json (never committed).
dbt-parse: $(STAMP)
	$(BIN)/dbt parse --quiet $(DBT_ARGS)

# The dbt manifest must exist before Dagster loads the dbt assets.
validate: dbt-parse
	$(BIN)/dagster definitions validate

test: validate
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: PYTEST_ARGS := -n auto --dist loadfile
test-all: test

# The world is generated once; delete $(SANDBOX_WORLD) (or `make clean`) to make a new one.
world: $(STAMP)
	@if [ -f "$(SANDBOX_WORLD)/world.json" ]; then \
	  echo "sandbox world: $(SANDBOX_WORLD) (already there)"; \
	else \
	  $(BIN)/athena-pipeline sandbox generate --out "$(SANDBOX_WORLD)" $(WORLD_ARGS); \
	fi

# athena_pipeline/demo.py: generates the world when missing (WORLD_ARGS: --seed/--providers/--patients),
# starts the emulators and the webhook receiver, runs the pipeline through Dagster (runs recorded in
# .dagster_home, where `make dev` shows them), simulates a day, prints a summary, stops what it started.
demo: export DAGSTER_HOME := $(CURDIR)/.dagster_home
demo: dbt-parse
	$(BIN)/athena-pipeline demo --world "$(SANDBOX_WORLD)" $(WORLD_ARGS) $(DEMO_ARGS)

# Dagster keeps its run history in DAGSTER_HOME; pool limits live in the instance (see dagster.yaml).
dev: export DAGSTER_HOME := $(CURDIR)/.dagster_home
dev: world dbt-parse
	mkdir -p "$$DAGSTER_HOME"
	cp dagster.yaml "$$DAGSTER_HOME/dagster.yaml"
	$(BIN)/dagster instance concurrency set warehouse 1 >/dev/null
	$(BIN)/dagster instance concurrency set athena_api 2 >/dev/null
	$(BIN)/athena-pipeline sandbox serve --world "$(SANDBOX_WORLD)" --port $(SANDBOX_PORT) & \
	emulator=$$!; \
	trap 'kill $$emulator 2>/dev/null || true; wait $$emulator 2>/dev/null || true' EXIT; \
	for _ in $$(seq 100); do \
	  (exec 3<>/dev/tcp/127.0.0.1/$(SANDBOX_PORT)) 2>/dev/null && break; \
	  kill -0 $$emulator 2>/dev/null || { echo "the sandbox emulator did not start" >&2; exit 1; }; \
	  sleep 0.1; \
	done; \
	$(BIN)/dagster dev

clean:
	rm -rf .sandbox data .dagster_home .tmp_dagster_home_* dbt_project/target dbt_project/logs
