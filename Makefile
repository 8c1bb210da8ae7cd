# One command each: `make demo` (install + the end-to-end demo), `make test` (install + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is pinned here (the CPU wheel on this machine's disk); pyproject admits any >=2.5.
TORCH ?= torch==2.13.0
# llama.cpp (the GGUF tests run their files in it) built for AVX2, not for this CPU: a native build on an AMX CPU
# (Xeon Sapphire Rapids) crashes on q8_0 files (ggml-org/llama.cpp#20824). Built without pip's wheel cache, which
# would hand back an earlier native build whatever these flags say.
LLAMA_CMAKE ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip install -q --no-cache-dir "llama-cpp-python>=0.3"
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
