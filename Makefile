# `make run` and `make test` set everything up on first use and reuse it afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export ANAMNESIS_HOME ?= var
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast lint bench-learn bench-learn-ci bench-ewc-state bench-drift bench-drift-served bench-policy bench-serve bench-ingest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml scripts/install-system-packages.sh scripts/build_nltk_data.py | $(BIN)/python
	scripts/install-system-packages.sh
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python scripts/build_nltk_data.py $(VENV)/share/nltk_data
	touch $@

install: $(STAMP)

run: install
	$(BIN)/anamnesis db upgrade
	$(BIN)/anamnesis serve

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The quick loop (about a minute): lint, types, and the unit tests of storage, migrations, stored
# results, settings, the monitor and the cohort; no training, no subprocess fleet, no browser.
FAST_TESTS = tests/test_storage.py tests/test_migrations.py tests/test_stored_results.py tests/test_settings.py \
	tests/test_monitor_units.py tests/test_cohort.py tests/test_architecture.py
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not slow" -q $(FAST_TESTS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench-ingest: install
	$(BIN)/python benchmarks/ingest.py

bench-learn: install
	$(BIN)/anamnesis bench learn --scenario mixed --periods 5 --per-period 560 --seeds 0,1,2 \
		--strategies replay_ewc,joint --holdout 0.5

bench-learn-ci: install
	$(BIN)/anamnesis bench learn --scenario stable --periods 1 --per-period 900 --class-incremental 3 \
		--seeds 5 --strategies naive,replay_ewc,joint --holdout 0.5 --stem learn_class_incremental

bench-ewc-state: install
	$(BIN)/python benchmarks/ewc_state.py --updates 10 --per-period 80

bench-drift: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/drift.py timing

bench-drift-served: install
	$(BIN)/python benchmarks/drift_served.py

# About 70 minutes per seed alone on a 2-core CPU; add seeds to an earlier run with
# `--seeds 1 --merge docs/benchmarks/policy.json`.
bench-policy: install
	$(BIN)/anamnesis bench policy --scenario mixed --periods 8 --per-period 300 --seeds 0,1,2 \
		--policies never,every,every:2,labels:600,drift,oracle

# Needs the machine alone: trains a MiniLM on 600 records (a few minutes on 2 cores), then times the bare
# model calls and four servers (service and naive endpoint, ONNX int8 and PyTorch); about 10 minutes in all.
bench-serve: install
	$(BIN)/anamnesis bench serve --requests 100 --train-records 600

clean:
	rm -rf $(VENV) var .pytest_cache
