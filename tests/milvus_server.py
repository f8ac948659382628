"""A real Milvus 2.3.5 standalone for the tests, from the PyPI ``milvus`` package.

Milvus listens on all interfaces and the package cannot change that, so it is only ever
started inside a private network namespace (``unshare -n``, where ``lo`` is the only
interface): nothing outside the namespace can reach it. scripts/test.sh runs the Milvus pass
that way; elsewhere :func:`milvus_server_or_skip` skips with the reason.

The server keeps its files (binaries, etcd, rocksmq, segments, logs) under ``root/milvus``, so
:meth:`MilvusServer.kill` then :meth:`MilvusServer.start` restarts on the same data, like a
crashed server coming back. ``common.gracefulStopTimeout`` is set low: by default a SIGTERM
can wait 30 s and more for loaded collections before the server exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SKIP_NOT_PRIVATE = (
    "Milvus listens on all interfaces: run these tests inside `unshare -n` (scripts/test.sh does)"
)
SKIP_NO_PACKAGE = "the `milvus` package (PyPI milvus==2.3.5) is not installed"

# Seconds the server may spend on a graceful stop before it forces itself out.
GRACEFUL_STOP_SECONDS = 3
# Seconds a killed server's coordinator sessions stay in its etcd: a restart waits for them to
# expire. Measured here, back after a kill in ~55 s with the default 30, ~25 s with 10, ~15 s
# with 5. The keep-alive goes every ttl/3 within one process, so 5 is still safe.
SESSION_TTL_SECONDS = 5


# Milvus's time tick (proxy.timeTickInterval, 200 ms by default): a read that must see a write
# (Strong, or Session after this process's own write) waits for the next tick. The tests write
# and read back constantly, so their server ticks every 50 ms; consistency is the same, only
# the wait is shorter. bench/milvus_backend.py measures with the default.
TEST_TICK_MS = 50


def private_network() -> bool:
    """True when this process's network namespace has ``lo`` as its only interface.

    Asks the kernel (``if_nameindex``) rather than reading /sys/class/net: sysfs shows the
    namespace it was mounted in, so under a plain ``unshare -n`` it still lists the host's
    interfaces."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return False
    return names == ["lo"]


def _bind_reusing(port: int) -> socket.socket | None:
    """A listening socket on 127.0.0.1:port (closed by the package before the server
    starts), or None when something else listens there."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        sock.close()
        return None
    return sock


class MilvusServer:
    """One Milvus standalone process on loopback of a private namespace, restartable in place."""

    def __init__(self, root: Path, *, start_timeout: float = 120.0,
                 tick_ms: int = TEST_TICK_MS) -> None:
        import milvus

        self.base_dir = root / "milvus"
        self.start_timeout = start_timeout
        # A server object of our own rather than the module-level default_server, so that
        # nothing else in the process shares its state; same package, same code path.
        self._server: Any = milvus.MilvusServer(milvus.MilvusServerConfig(), wait_for_started=False)
        self._server.set_base_dir(str(self.base_dir))
        self._server.config.set("common.gracefulStopTimeout", GRACEFUL_STOP_SECONDS)
        self._server.config.set("common.session.ttl", SESSION_TTL_SECONDS)
        self._server.config.set("proxy.timeTickInterval", tick_ms)
        # The query coordinator's rounds (1 s and 0.5 s by default) pace every collection
        # release and drop, which each test's wipe does: measured 1.0 s -> 0.2 s a drop.
        self._server.config.set("queryCoord.checkInterval", 200)
        self._server.config.set("queryCoord.distPullInterval", 200)
        # The package probes each port by binding it without SO_REUSEADDR, so right after a
        # kill (the old connections in TIME_WAIT) it would move the server to the next free
        # port and clients of the old one would never find it again. Probe as the server
        # itself binds (Go sets SO_REUSEADDR): a restarted server comes back where it was.
        self._server.config.try_bind_port = _bind_reusing
        self.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self._server.listen_port}"

    @property
    def pid(self) -> int:
        """The milvus binary's own process id (the package runs it directly, no wrapper)."""
        proc = self._process()
        if proc is None:
            raise RuntimeError("Milvus is not running")
        return int(proc.pid)

    @property
    def running(self) -> bool:
        proc = self._process()
        return proc is not None and proc.poll() is None

    def start(self) -> None:
        """Start the server (again, on the same data dir) and wait until it answers."""
        if self.running:
            return
        self._forget_process()
        self._server.start()
        try:
            self._wait_until_ready()
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no flush, no release, no cleanup."""
        proc = self._process()
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self._forget_process()

    def stop(self, timeout: float = 20.0) -> None:
        """Release what is loaded, SIGTERM, and SIGKILL if it is not gone within ``timeout``."""
        proc = self._process()
        if proc is None or proc.poll() is not None:
            self._forget_process()
            return
        with contextlib.suppress(Exception):
            self._release_all()
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        self._forget_process()

    def wipe(self) -> None:
        """Drop every alias and collection in every database, then the databases but default."""
        for _, milvus, collection in self._collections():
            # Not list_aliases: Milvus 2.3.5 looks the collection up in the default database
            # whatever the client's is; describe_collection names them too.
            for collection_alias in milvus.describe_collection(collection)["aliases"]:
                milvus.drop_alias(collection_alias)
            milvus.drop_collection(collection)
        with self._client() as milvus:
            for name in milvus.list_databases():
                if name != "default":
                    milvus.drop_database(name)

    def _collections(self) -> Iterator[tuple[str, Any, str]]:
        """(database, a client on it, collection) for every collection in every database."""
        with self._client() as milvus:
            databases = list(milvus.list_databases())
        for name in databases:
            with self._client(name) as milvus:
                for collection in milvus.list_collections():
                    yield name, milvus, collection

    def server_version(self) -> str:
        with self._client() as milvus:
            return str(milvus.get_server_version())

    @contextlib.contextmanager
    def _client(self, database: str = "default") -> Iterator[Any]:
        """A pymilvus MilvusClient on one database."""
        from pymilvus import MilvusClient

        milvus = MilvusClient(uri=self.uri, db_name=database, timeout=30)
        try:
            yield milvus
        finally:
            milvus.close()

    def _release_all(self) -> None:
        for _, milvus, collection in self._collections():
            milvus.release_collection(collection, timeout=10)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        health = f"http://127.0.0.1:{self._server.webservice_port}/healthz"
        while True:
            proc = self._process()
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"Milvus exited while starting: see {self.base_dir / 'logs'}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(health, timeout=2) as response,
            ):
                if b"OK" in response.read():
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Milvus did not answer within {self.start_timeout} s")
            time.sleep(0.2)
        # Healthy is not yet serving: wait for a real answer over the client protocol.
        while True:
            try:
                self.server_version()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _process(self) -> subprocess.Popen[bytes] | None:
        proc: subprocess.Popen[bytes] | None = self._server.server_proc
        return proc

    def _forget_process(self) -> None:
        """Let the package object know the process is gone (it keeps a handle and log files)."""
        self._server.server_proc = None
        for handle in self._server.proc_fds.values():
            handle.close()
        self._server.proc_fds.clear()


def milvus_server_or_skip(root: Path) -> MilvusServer:
    """Start a server for the tests, or skip them when it must not or cannot run here."""
    if not private_network():
        pytest.skip(SKIP_NOT_PRIVATE)
    try:
        import milvus  # noqa: F401
    except ImportError:
        pytest.skip(SKIP_NO_PACKAGE)
    return MilvusServer(root)
