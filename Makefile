# ceres-supervisor: `make demo` runs the main job, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
DEMO_DIR ?= /tmp/ceres-supervisor-demo

VERSIONS ?= 1.2.2 1.2.7 2.0.0

.PHONY: help setup docker emulator lint unit test demo clean

help:
	@echo "make demo   set up, then show the example cluster validated and rendered"
	@echo "make test   set up (virtualenv, Docker Engine), then ruff, mypy and pytest"

# The virtualenv with the project and its test dependencies, rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# A Docker Engine that answers (installs and starts one on Debian as root).
docker:
	@scripts/ensure-docker.sh

# The CeresMeta / CeresDB stand-in images (tests/emulator), rebuilt only when their sources change.
emulator: setup docker
	$(BIN)/python tests/emulator/build.py $(VERSIONS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest tests/unit

test: setup docker emulator lint
	CERES_EMULATOR_VERSIONS="$(VERSIONS)" $(BIN)/pytest

demo: setup
	$(BIN)/ceres-supervisor validate -c etc/ceres-supervisor/cluster.toml
	rm -rf $(DEMO_DIR) && $(BIN)/ceres-supervisor render -c etc/ceres-supervisor/cluster.toml -o $(DEMO_DIR)
	@for f in $(DEMO_DIR)/*/*; do echo "=== $$f"; cat "$$f"; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
