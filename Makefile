# Two entry points: `make run` (default small-to-large experiment) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# --resume: a second `make run` reuses the finished runs instead of refusing the folder.
run: $(STAMP)
	$(VENV)/bin/fedbrb-fast compare --resume

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-enable

clean:
	rm -rf $(VENV) runs .pytest_cache
