# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_output

.PHONY: setup setup-test browser demo test fuzz bench clean-venv

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

# The hypothesis tests with new random examples, ten runs (`make test` runs them
# derandomized, so that it passes or fails the same way every time).
fuzz: setup-test
	for run in 1 2 3 4 5 6 7 8 9 10; do \
	  LAYERCLIP_HYPOTHESIS=explore MPLBACKEND=agg $(PY) -m pytest -q -p no:cacheprovider \
	    tests/test_fuzz.py tests/test_properties.py || exit 1; \
	done

bench: setup-test
	MPLBACKEND=agg $(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
