# The two commands: `make run` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Installs read only the lock: no pip configuration of the machine (extra indexes, local
# wheel folders) can change what gets installed.
PIP := PIP_CONFIG_FILE=/dev/null $(BIN)/python -m pip --isolated --disable-pip-version-check

.PHONY: run test setup lock lint system-packages migrate seed bench clean

# Exact, hashed versions from requirements.lock (pip, setuptools and wheel included), then the
# project itself in editable mode without resolving anything.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --require-hashes --no-deps -r requirements.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Refresh the lock after changing dependencies in pyproject.toml (or to take new releases:
# `make lock ARGS=--upgrade`). Commit requirements.lock with the change.
lock:
	test -x $(BIN)/uv || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); $(PIP) install --quiet uv; }
	$(BIN)/uv pip compile pyproject.toml --all-extras --generate-hashes --universal \
		--python-version 3.11 --quiet $(ARGS) -o requirements.lock

# Debian packages the suite uses: chromium (browser tests), poppler-utils (pdftotext),
# libharfbuzz-subset0 (WeasyPrint's font subsetting), redis-server and PostgreSQL binaries
# when no local servers run. Installed only if missing.
system-packages:
	@scripts/system-packages.sh

run: $(STAMP)
	@scripts/run.sh

# Lint, format check and types: what pre-commit runs, with the versions in the lock.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Lint first: a style or type error fails in seconds, not after the suite.
test: lint system-packages
	@$(BIN)/python scripts/run_tests.py $(ARGS)

migrate: $(STAMP)
	$(BIN)/flask --app wsgi db upgrade

bench: $(STAMP)
	$(BIN)/python bench/pages.py

clean:
	rm -rf $(VENV) instance/*.sqlite3* .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
