# Two commands for a newcomer:  make reproduce   |   make test
# make reproduce writes out/$(PROFILE)/ (never data/ or figures/); make publish makes that run the reference.
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu

.PHONY: setup reproduce publish results test test-fast lab

setup:
	bash scripts/setup.sh $(VENV)

reproduce: setup
	$(PY) -m lrdnb reproduce --profile $(PROFILE)

publish: setup
	$(PY) -m lrdnb publish out/$(PROFILE)

results: setup
	$(PY) -m lrdnb results

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not notebooks and not browser"

lab: setup
	$(VENV)/bin/jupyter lab notebooks/
