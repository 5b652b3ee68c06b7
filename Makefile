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

.PHONY: install run test lint bench-learn bench-learn-ci bench-ewc-state bench-drift bench-serve bench-ingest clean

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
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
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
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/drift.py alarms

bench-serve: install
	$(BIN)/anamnesis bench serve

clean:
	rm -rf $(VENV) var .pytest_cache
