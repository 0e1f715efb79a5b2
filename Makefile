# Two commands for a newcomer:  make reproduce   |   make test
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu

.PHONY: setup reproduce test test-fast lab

setup:
	bash scripts/setup.sh $(VENV)

reproduce: setup
	$(PY) -m lrdnb reproduce --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not notebooks and not browser"

lab: setup
	$(VENV)/bin/jupyter lab notebooks/
