"""A real ``semsearch serve`` process on a free loopback port, for the tests that need the
service as a user runs it (the CLI's, and several processes sharing one database)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_process(env: dict[str, str], log: Path, *args: str,
                  cwd: Path | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start ``semsearch serve`` (output to ``log``), wait for /readyz, yield (url, process);
    stop it with SIGTERM, failing the test if it ignores it for 30 s."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "semsearch", "serve", "--port", str(port),
                                 *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"serve exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"never ready:\n{log.read_text()}"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"serve ignored SIGTERM for 30 s:\n{log.read_text()}")
