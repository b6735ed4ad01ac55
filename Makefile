# Two commands on a fresh machine (python3 >= 3.11, make):
#   make demo   set up, then run the whole product on its embedded defaults
#   make test   set up, then run the test suite (installs and starts a throwaway PostgreSQL)
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test setup lint

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pulid-bot demo

test: $(STAMP)
	VENV=$(VENV) scripts/test.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check bot engine storage tests benchmarks
	$(VENV)/bin/ruff format --check bot engine storage tests benchmarks
	$(VENV)/bin/mypy
