# Two entry points: `make run` (default small-to-large experiment) and `make test` (every test);
# `make test-fast` leaves out the slow and GPU tests while developing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-fast bench clean

# Every extra (dev includes them all), at the exact builds of constraints.txt (the CPU torch).
$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fedbrb-fast compare

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

bench: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-enable

clean:
	rm -rf $(VENV) runs .pytest_cache
