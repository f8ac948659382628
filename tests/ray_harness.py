"""A real Ray for the tests: the local one ``--executor ray`` starts, or a head node started
with ``ray start --head`` for ``--executor ray://``.

Ray's processes listen on all interfaces and probe an outside DNS address for their own IP,
so they only ever run inside a private network namespace (``unshare -n`` with ``lo`` up,
as scripts/test.sh runs the ``ray`` tests); elsewhere :func:`require_ray` skips with the
reason. Usage statistics are off and no dashboard is started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.milvus_server import private_network
from tests.serving import free_port

SKIP_NOT_PRIVATE = ("Ray listens on all interfaces and probes 8.8.8.8 for its address: run "
                    "the ray tests inside `unshare -n` (scripts/test.sh does)")
SKIP_NO_RAY = "Ray is not installed: pip install -e '.[ray]'"

# Both the head and its clients: token authentication on (Ray's default for a new cluster)
# with a token of the test's own, so nothing is read from or written to ~/.ray.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": "semsearch-tests-0123456789abcdef0123456789abcdef"}


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray() -> None:
    if not ray_installed():
        pytest.skip(SKIP_NO_RAY)
    if not private_network():
        pytest.skip(SKIP_NOT_PRIVATE)




def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's daemons re-parent nothing while the head lives)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@contextlib.contextmanager
def ray_head(tmp: Path, cpus: int = 2) -> Iterator[str]:
    """A Ray head node on loopback for the duration; yields its ``ray://`` address. Stopped
    by signalling the processes it started (never ``ray stop``, which stops every Ray on the
    machine)."""
    client_port, gcs_port = free_port(), free_port()
    log = (tmp / "ray-head.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         f"--port={gcs_port}", f"--ray-client-server-port={client_port}",
         f"--num-cpus={cpus}", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
         "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **RAY_ENV},
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", client_port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ray start --head did not come up: "
                                   + (tmp / "ray-head.log").read_text(errors="replace")[-2000:])
            time.sleep(0.3)
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        family = _descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in family + _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()
