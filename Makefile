# ceres-supervisor: `make demo` runs the main job, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

VERSIONS ?= 1.2.2 1.2.4 1.2.5 1.2.6 1.2.7 2.0.0

.PHONY: help setup docker emulator promtool rules lint unit test demo demo-stop demo-cluster demo-cluster-stop bench chaos clean

help:
	@echo "make demo   set up, build the stand-in images, run the supervisor on the example cluster, show status"
	@echo "make test   set up (virtualenv, Docker Engine), then ruff, mypy and pytest"
	@echo "make bench  measure the targets (bench/RESULTS.md); make chaos: the long chaos run"

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
	$(BIN)/python testkit/emulator.py $(VERSIONS)

# promtool (Debian's `prometheus` package) checks the alerting rules and the /metrics text.
promtool:
	@scripts/ensure-promtool.sh

# The alerting rules: syntax, then their unit tests (each alert fires on its condition and stays
# quiet on a healthy series).
rules: promtool
	promtool check rules etc/prometheus/ceres-supervisor.rules.yml
	promtool test rules etc/prometheus/tests/*.yml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup promtool
	$(BIN)/pytest -q tests/unit

# Pure tests first (stop at the first failure), then the Docker-backed ones on WORKERS processes
# (ports and names are partitioned per worker), then the serial phase: scenarios that disturb the
# whole machine (restarting dockerd) run alone, last.
WORKERS ?= 3
test: setup docker emulator lint rules
	@scripts/ensure-chromium.sh
	$(BIN)/pytest -q -x tests/unit
	CERES_EMULATOR_VERSIONS="$(VERSIONS)" $(BIN)/pytest -n $(WORKERS) --dist loadgroup --durations=15 \
		tests/emulator tests/integration
	CERES_EMULATOR_VERSIONS="$(VERSIONS)" $(BIN)/pytest --durations=5 tests/serial

demo: setup docker emulator
	@scripts/demo.sh

demo-stop: setup
	@scripts/demo-stop.sh

# Several machines on this one: three agents (--host 127.0.0.1/2/3) on one file; prints the cluster view.
demo-cluster: setup docker emulator
	@scripts/demo-cluster.sh

demo-cluster-stop: setup
	@scripts/demo-cluster-stop.sh

# The targets of bench/RESULTS.md, measured (about 30 minutes on 2 cores; each script prints its tables and how
# long it took); bench/RESULTS.md is then written whole from this run (bench/report.py).
bench: setup docker emulator
	rm -rf bench/.results
	cd bench && ../$(BIN)/python restart.py 20
	cd bench && ../$(BIN)/python crashes.py 5 6
	cd bench && ../$(BIN)/python steady.py 60
	cd bench && ../$(BIN)/python metricslib.py 5
	cd bench && ../$(BIN)/python coldstart.py 5
	cd bench && ../$(BIN)/python scale.py 60 30
	cd bench && ../$(BIN)/python cluster.py 20 5 60
	cd bench && ../$(BIN)/python cluster_chaos.py 600
	cd bench && ../$(BIN)/python storeclient.py 3 1000
	cd bench && ../$(BIN)/python backup.py 5 10000
	cd bench && ../$(BIN)/python upgrade.py 2
	cd bench && ../$(BIN)/python report.py

# The long chaos run (CI runs a short one inside make test).
CHAOS_SECONDS ?= 900
chaos: setup docker emulator
	CERES_CHAOS_SECONDS=$(CHAOS_SECONDS) $(BIN)/pytest -p no:logging tests/integration/test_chaos.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
