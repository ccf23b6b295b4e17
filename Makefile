# The two commands: `make run` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup system-packages migrate seed bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the suite uses: chromium (browser tests), poppler-utils (pdftotext),
# redis-server and PostgreSQL binaries when no local servers run. Installed only if missing.
system-packages:
	@scripts/system-packages.sh

run: $(STAMP)
	@scripts/run.sh

test: $(STAMP) system-packages
	@$(BIN)/python scripts/run_tests.py $(ARGS)

migrate: $(STAMP)
	$(BIN)/flask --app wsgi db upgrade

bench: $(STAMP)
	$(BIN)/python bench/pages.py

clean:
	rm -rf $(VENV) instance/*.sqlite3* .pytest_cache
