# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_output

.PHONY: setup setup-test browser demo test bench clean-venv

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

# The HTML-report test opens the page in Debian's chromium: install it where we can (root
# with apt-get), never fail the run where we cannot (that test then skips, saying why).
browser:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "note: chromium could not be installed; the browser test will be skipped"

test: setup-test browser
	MPLBACKEND=agg $(PY) -m pytest

bench: setup-test
	MPLBACKEND=agg $(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
