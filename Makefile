# One command each: `make demo` (install + the end-to-end demo), `make test` (install + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is pinned here (the CPU wheel on this machine's disk); pyproject admits any >=2.5.
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/gptmini demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m pip install -q -e ".[dev,bench]"
	for b in bench/*.py; do $(PY) $$b || exit 1; done

.PHONY: install demo test bench
