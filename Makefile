# Tunery: the two commands are `make demo` (set up and run the main job end to end) and
# `make test` (install test dependencies and run the whole suite). See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PACKS := $(wildcard verticals/*/pyproject.toml)
# torch is pinned to the CPU build by default; GPU hosts install their own (see README).
EDITABLES := -e contract -e . $(foreach p,$(PACKS),-e $(dir $(p)))
# The postgres run of the suite (CI runs both databases).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/tunery

.PHONY: demo install install-test test test-fast lint format bench clean

$(VENV)/.installed: pyproject.toml contract/pyproject.toml $(PACKS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(EDITABLES)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m tunery.demo

lint: install-test
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: install-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -q -m "postgres or not slow" tests --ignore=tests/engine

test-fast: install-test
	$(PY) -m pytest -q -m "not slow" -x

clean:
	rm -rf $(VENV) var
