#!/usr/bin/env bash
# Builds llama-cpp-python into a benchmark-only venv (never a project or test dependency).
#
#   bash benchmarks/setup_llamacpp.sh [VENV]     # default: benchmarks/.venv-llamacpp
#
# The build is from source (5-10 minutes on 2 cores) and tuned for this CPU (GGML_NATIVE),
# so the venv records the CPU it was built on and is rebuilt when the CPU changes
# (these VMs differ from one day to the next). Idempotent: a matching build is kept.
# The server extra (llama-cpp-python[server]: uvicorn, fastapi, ...) is installed beside it for
# benchmarks/check_llamacpp_server.py, which runs llama.cpp's OpenAI-compatible server.
set -euo pipefail
LLAMA_CPP_PYTHON_VERSION=0.3.36
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:-$HERE/.venv-llamacpp}"
PYTHON="${PYTHON:-python3.11}"
cpu_id="$( (grep -m1 'model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo) | sha1sum | cut -c1-16)"
stamp="$VENV/.llamacpp-$LLAMA_CPP_PYTHON_VERSION-$cpu_id"
if [ ! -f "$stamp" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$VENV/bin/python" -m pip install -q --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    touch "$stamp"
fi
# The server extra's dependencies only: the build above satisfies llama-cpp-python itself, so pip keeps it.
if ! "$VENV/bin/python" -c "import llama_cpp.server.app" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --no-binary llama-cpp-python \
        "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
fi
