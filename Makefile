# ceres-supervisor: `make demo` runs the main job, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

VERSIONS ?= 1.2.2 1.2.4 1.2.5 1.2.6 1.2.7 2.0.0

.PHONY: help setup docker emulator promtool rules lint unit test coverage mutants demo demo-stop demo-cluster demo-cluster-stop bench chaos clean

help:
	@echo "make demo   set up, build the stand-in images, run the supervisor on the example cluster, show status"
	@echo "make test   set up (virtualenv, Docker Engine), then ruff, mypy and pytest"
	@echo "make bench  measure the targets (bench/RESULTS.md); make chaos: the long chaos run"
	@echo "make coverage  every suite under coverage.py -> tests/COVERAGE.md; make mutants: mutmut -> tests/MUTANTS.md"

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

# First the serial phase, the scenario that restarts the Docker Engine itself (which every other
# Docker-backed test would feel), beside ruff, mypy and the import contracts. Then the Docker-backed
# tests on WORKERS processes (ports and names are partitioned per worker) and, beside them at a
# lower CPU priority (nice 10), the pure tests (stopping at the first failure): the Docker-backed
# phase leaves about a tenth of the two cores idle (waits on containers, on the stand-ins' pace),
# which the pure tests fill. Each run has its own range of ports (CERES_TEST_PORTS). The alerting rules' promtool
# checks run inside the unit tests (tests/unit/test_alerting.py). Four workers: the Docker-backed
# phase is bound by the 2 cores' CPU (containers starting, etcd, the daemons); a fifth or sixth
# only queued more of it, and the run was no shorter (README, "How long `make test` takes").
WORKERS ?= 4
SERIAL_LOG := .serial-tests.log
UNIT_LOG := .unit-tests.log
test: setup docker emulator promtool
	@scripts/ensure-chromium.sh
	@( CERES_EMULATOR_VERSIONS="$(VERSIONS)" $(BIN)/pytest -p no:cacheprovider --durations=5 tests/serial \
		> $(SERIAL_LOG) 2>&1 ) & serial=$$!; \
	$(MAKE) --no-print-directory lint; lint=$$?; \
	wait $$serial; rc=$$?; echo "== tests/serial (ran beside the lint)"; cat $(SERIAL_LOG); \
	rm -f $(SERIAL_LOG); test $$lint -eq 0 && test $$rc -eq 0
	@( CERES_TEST_PORTS=10000-17999 nice -n 10 $(BIN)/pytest -q -x -n 2 -p no:cacheprovider tests/unit \
		> $(UNIT_LOG) 2>&1 ) & unit=$$!; \
	CERES_TEST_PORTS=18000-65535 CERES_EMULATOR_VERSIONS="$(VERSIONS)" $(BIN)/pytest -n $(WORKERS) \
		--dist loadgroup --durations=15 tests/emulator tests/integration; rc=$$?; \
	wait $$unit; unit_rc=$$?; echo "== tests/unit (ran beside the Docker-backed tests)"; cat $(UNIT_LOG); \
	rm -f $(UNIT_LOG); test $$rc -eq 0 && test $$unit_rc -eq 0

# Branch coverage of the unit, Docker-backed and serial suites, each alone and together, the daemons
# the Docker-backed tests start as processes included (pyproject's [tool.coverage.run]), written
# into tests/COVERAGE.md with the commit measured. As long as `make test`; not part of it, nor of
# CI. A suite that fails still leaves its coverage (its outcome is in the report).
# COVERAGE_SUITES=unit measures the unit suite alone (a minute, no Docker).
COVERAGE_DATA := .coverage-data
COVERAGE_SUITES ?= unit docker serial
coverage: setup
	@rm -rf $(COVERAGE_DATA) && mkdir -p $(COVERAGE_DATA)
	@if [[ " $(COVERAGE_SUITES) " == *" docker "* || " $(COVERAGE_SUITES) " == *" serial "* ]]; then \
		$(MAKE) --no-print-directory docker emulator && scripts/ensure-chromium.sh; fi
	@for suite in $(COVERAGE_SUITES); do \
		case $$suite in \
		unit) args="-q -p no:cacheprovider tests/unit" ;; \
		docker) args="-q -p no:cacheprovider -n $(WORKERS) --dist loadgroup tests/emulator tests/integration" ;; \
		serial) args="-q -p no:cacheprovider tests/serial" ;; \
		*) echo "unknown suite $$suite" >&2; exit 2 ;; \
		esac; \
		mkdir -p $(COVERAGE_DATA)/$$suite; \
		echo "== $$suite: coverage run -m pytest $$args"; \
		COVERAGE_FILE=$(CURDIR)/$(COVERAGE_DATA)/$$suite/.coverage CERES_EMULATOR_VERSIONS="$(VERSIONS)" \
			$(BIN)/coverage run -m pytest $$args; echo $$? > $(COVERAGE_DATA)/$$suite.status; \
		$(BIN)/coverage combine -q --keep --data-file=$(COVERAGE_DATA)/$$suite/.coverage $(COVERAGE_DATA)/$$suite && \
		$(BIN)/coverage json -q --data-file=$(COVERAGE_DATA)/$$suite/.coverage -o $(COVERAGE_DATA)/$$suite.json; \
	done
	@mkdir -p $(COVERAGE_DATA)/all
	@$(BIN)/coverage combine -q --keep --data-file=$(COVERAGE_DATA)/all/.coverage \
		$(foreach suite,$(COVERAGE_SUITES),$(COVERAGE_DATA)/$(suite)/.coverage)
	@$(BIN)/coverage json -q --data-file=$(COVERAGE_DATA)/all/.coverage -o $(COVERAGE_DATA)/all.json
	@$(BIN)/coverage report --data-file=$(COVERAGE_DATA)/all/.coverage --sort=cover | tail -n 25
	$(BIN)/python scripts/coverage_report.py $(COVERAGE_DATA)

# Mutation testing of the decision modules ([tool.mutmut] in pyproject) against the unit tests,
# niced (it takes a while: see tests/MUTANTS.md for how long). Results go to
# tests/MUTANTS.md with the commit measured. Not part of `make test`.
MUTANT_JOBS ?= 1
mutants: setup
	$(BIN)/python -m pip install -q -e '.[test,mutants]'
	rm -rf mutants
	nice -n 10 $(BIN)/mutmut run --max-children $(MUTANT_JOBS)
	$(BIN)/python scripts/mutants_report.py

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
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache $(COVERAGE_DATA) mutants
