# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_output

.PHONY: setup setup-test demo test bench clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamps re-run the install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test

demo: setup
	MPLBACKEND=agg $(VENV)/bin/layerclip demo --out $(DEMO_OUT) --overwrite

test: setup-test
	MPLBACKEND=agg $(PY) -m pytest

bench: setup-test
	MPLBACKEND=agg $(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
