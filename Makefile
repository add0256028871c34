# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make demo   -- the main job on embedded defaults (SQLite warehouse, local emulator)
#   make test   -- install everything and run the whole test suite
# And for the supported Airflow versions:
#   make test-matrix  -- the hook, operator, ledger and DAG tests on Airflow 2.11, 3.0,
#                        3.1 (venvs in .venvs/) and the latest 3.x (.venv); results in
#                        test-artifacts/matrix/ (MATRIX_LINES="2.11 3.0" for some lines)
# And the built wheel in a user's Airflow:
#   make check-wheel-airflow211 -- the wheel pip-installed into fresh Airflow 2.11 and 3.0 venvs
#                        (WHEEL_LINES="2.11" for one): Airflow's version kept, the example
#                        DAG run against the emulator, each purchase delivered exactly once
# And the documentation:
#   make docs         -- the Sphinx site from docs/ into test-artifacts/docs/, warnings as errors
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-matrix lint typecheck benchmark check-wheel check-wheel-airflow211 docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[sqlite]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	scripts/ensure-system-packages.sh
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-demo

$(VENV)/.installed-docs: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

demo: $(VENV)/.installed-demo
	$(PY) scripts/demo.py

test: $(VENV)/.installed-test lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-matrix: $(VENV)/.installed-test
	PYTHON=$(PYTHON) VENV=$(VENV) scripts/test-matrix.sh $(MATRIX_LINES)

lint: $(VENV)/.installed-test typecheck
	$(VENV)/bin/ruff check pagent_provider tests dags scripts benchmarks docs

# mypy on pagent_provider; its settings are pyproject.toml's [tool.mypy]
typecheck: $(VENV)/.installed-test
	$(PY) -m mypy

benchmark: $(VENV)/.installed-test
	$(PY) -m benchmarks $(BENCH_ARGS)

check-wheel:
	scripts/check-wheel.sh

WHEEL_LINES ?= 2.11 3.0
check-wheel-airflow211: $(VENV)/.installed-test
	PYTHON=$(PYTHON) VENV=$(VENV) scripts/check-wheel-airflow211.sh $(WHEEL_LINES)

docs: $(VENV)/.installed-docs
	$(VENV)/bin/sphinx-build -E -W --keep-going -b html docs test-artifacts/docs

clean:
	rm -rf $(VENV) .venvs .pytest_cache .mypy_cache build dist *.egg-info test-artifacts
