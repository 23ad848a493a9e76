# Two commands do all set-up on a fresh machine:
#   make run    create .venv if missing, then run the whole pipeline (dvc repro) on the embedded default
#               and push its data, model and run cache to the DVC remote (../medsql-dvc-remote)
#   make test   create .venv if missing, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_ENABLE_TELEMETRY := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-fast lint airflow bench clean

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

run: $(BIN)/.installed
	dvc repro
	dvc push --run-cache

test: $(BIN)/.installed
	pytest -q -rs --timeout=1500 $(PYTEST_ARGS)

test-fast: $(BIN)/.installed
	pytest -q -rs -m "not slow" $(PYTEST_ARGS)

lint: $(BIN)/.installed
	ruff check medsql dags tests evalsets

# Airflow standalone on 127.0.0.1:8080 with the medsql DAG; prints how to log in (AIRFLOW_PORT=... to move it).
airflow: $(BIN)/.installed
	scripts/airflow_standalone.sh

bench: $(BIN)/.installed
	python -m medsql.bench

clean:
	rm -rf $(VENV) data models checkpoints mlruns mlflow.db mlartifacts airflow_home
