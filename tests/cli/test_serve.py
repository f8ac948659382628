"""``semsearch serve`` and ``semsearch keys`` as a user runs them: real subprocesses on a
loopback port, sharing the session's built model through SEMSEARCH_HOME/models."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.types import InputType
from semsearch.services.ingest import index_documents
from semsearch.services.quickstart import sample_dir
from semsearch.wiring import open_engine
from tests.serving import serve_process


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "SEMSEARCH_HOME": str(settings.home), "SEMSEARCH_NO_PROGRESS": "1",
            "SEMSEARCH_EMBEDDER_THREADS": "1"}


def run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semsearch", *args], capture_output=True,
                          text=True, env=_env(settings), timeout=120)




@pytest.fixture
def home(settings: Settings, embedder: LocalOnnxEmbedder) -> Settings:
    """A home with the sample corpus indexed as "docs"; the model is built before any server
    starts, so workers only load it (two workers building it at once would race)."""
    embedder.embed(["warm up"], InputType.QUERY)
    engine = open_engine(settings)
    try:
        index_documents(engine, "docs", iter_documents(sample_dir()))
    finally:
        engine.close()
    return settings


@contextmanager
def serving(settings: Settings, log: Path,
            *args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with serve_process(_env(settings), log, *args) as served:
        yield served


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def _server_side_owners(port: int, pids: set[int]) -> set[int]:
    """The pids among ``pids`` holding an established connection accepted on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                inodes.add(f[9])
    owners = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            m = re.fullmatch(r"socket:\[(\d+)\]", target)
            if m and m.group(1) in inodes:
                owners.add(pid)
    return owners


@pytest.mark.embedded_only(
    reason="the keys file; on PostgreSQL keys are rows (tests/e2e/test_postgres_shared.py)")
def test_keys_create_and_list(settings: Settings) -> None:
    made = run(settings, "keys", "create", "ci", "--scope", "docs:read", "--scope", "*:write")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert re.fullmatch(r"ss_[A-Za-z0-9_-]{40,}", key), made.stdout
    assert "only" in made.stderr and "hash" in made.stderr and key not in made.stderr
    run(settings, "keys", "create", "ops", "--scope", "*:admin")

    listed = run(settings, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["ci: *:write, docs:read", "ops: *:admin"]
    stored = (settings.home / "api_keys.json").read_text()
    assert key not in stored and key not in listed.stdout
    assert not re.search(r"[0-9a-f]{64}", listed.stdout)  # no hashes either

    bad = run(settings, "keys", "create", "x", "--scope", "docs:owner")
    assert bad.returncode == 2 and "COLLECTION:LEVEL" in bad.stderr
    assert run(settings, "keys", "create", "x").returncode == 2  # --scope is required


def test_keys_list_when_there_are_none(settings: Settings) -> None:
    out = run(settings, "keys", "list")
    assert out.returncode == 0 and "no API keys" in out.stdout


def test_keys_revoke(settings: Settings) -> None:
    for name in ("ci", "ops"):
        assert run(settings, "keys", "create", name, "--scope", "*:read").returncode == 0
    gone = run(settings, "keys", "revoke", "ci")
    assert gone.returncode == 0, gone.stderr
    assert "revoked 'ci'" in gone.stderr and "open" not in gone.stderr
    assert run(settings, "keys", "list").stdout.splitlines() == ["ops: *:read"]

    unknown = run(settings, "keys", "revoke", "ci")
    assert unknown.returncode == 2
    assert "no API key named 'ci'" in unknown.stderr and "ops" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    last = run(settings, "keys", "revoke", "ops")  # allowed, but it opens the API: say so
    assert last.returncode == 0 and "open to anyone" in last.stderr
    assert "no API keys" in run(settings, "keys", "list").stdout
    assert not list(settings.home.glob("*.tmp")) and not list(settings.home.glob(".*.tmp"))


@pytest.mark.embedded_only(
    reason="the keys file; on PostgreSQL keys are rows (tests/e2e/test_postgres_shared.py)")
def test_keys_file_changes_reach_a_running_server(home: Settings, tmp_path: Path) -> None:
    """Create, use, revoke, add: a running server follows the keys file with no restart;
    a broken file keeps the last good keys (and logs why), never a 500 or a lock-out."""
    def make(name: str, scope: str) -> str:
        made = run(home, "keys", "create", name, "--scope", scope)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    ops = make("ops", "*:admin")
    reader = make("reader", "docs:read")
    path = home.home / "api_keys.json"
    log = tmp_path / "serve.log"
    params = {"q": "sourdough starter feeding", "collection": "docs", "k": 3}
    with serving(home, log) as (url, _proc), httpx.Client(base_url=url, timeout=60) as c:
        def status(key: str | None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return c.get("/search", params=params, headers=headers).status_code

        assert (status(reader), status(ops), status(None)) == (200, 200, 401)
        assert run(home, "keys", "revoke", "reader").returncode == 0
        assert (status(reader), status(ops)) == (401, 200)
        later = make("later", "docs:read")
        assert (status(later), status(reader)) == (200, 401)

        good = path.read_text()
        path.write_text('{"keys": [')  # a bad edit: the last good keys stay in force
        assert (status(later), status(ops), status(reader), status(None)) == (200, 200, 401, 401)
        path.write_text('{"keys": [{"name": "x", "sha256": "ab", "scopes": {"*": "owner"}}]}')
        assert (status(later), status(None)) == (200, 401)
        path.write_text(good)  # fixed: read again
        assert (status(later), status(ops), status(None)) == (200, 200, 401)

        path.unlink()  # no file is no keys, as at start-up: open, and logged as such
        assert status(None) == 200
        assert make("again", "docs:read") and status(None) == 401
    text = log.read_text()
    assert text.count("is invalid") == 2, text  # once per bad version, not per request
    assert text.count("ERROR:") == 2 and "keeping the 2 key(s) read before" in text, text
    assert "WARNING:" in text and "open to anyone" in text and "(it was removed)" in text
    assert "INFO:     API keys reloaded from" in text
    assert "Traceback" not in text


def test_serve_answers_searches_and_stops_cleanly(home: Settings, tmp_path: Path) -> None:
    key = run(home, "keys", "create", "reader", "--scope", "docs:read").stdout.strip()
    with serving(home, tmp_path / "serve.log") as (url, proc):
        with httpx.Client(base_url=url, timeout=60) as c:
            params = {"q": "sourdough starter feeding", "collection": "docs", "k": 3}
            assert c.get("/search", params=params).status_code == 401
            r = c.get("/search", params=params, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            assert r.json()["hits"][0]["doc_id"] == "sourdough-starter.md"
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status says
        # "terminated by SIGTERM" (what a supervisor expects); the log shows it was clean.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    log = (tmp_path / "serve.log").read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log
    assert "warning: serving on" not in log  # loopback: no open-API warning


def test_serve_with_two_workers(home: Settings, tmp_path: Path) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to see which process serves a connection")
    log = tmp_path / "serve.log"
    with serving(home, log, "--workers", "2") as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 90  # /readyz answered by one; wait for the other
        while log.read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
        workers = _children(proc.pid)  # the two workers (and any multiprocessing helper)
        clients: list[httpx.Client] = []
        owners: set[int] = set()
        try:
            # Hold connections open until both workers own one they answered /readyz on.
            for _ in range(40):
                c = httpx.Client(base_url=url, timeout=30)
                clients.append(c)
                r = c.get("/readyz")
                assert r.status_code == 200 and r.json() == {"ready": True}
                owners = _server_side_owners(port, workers)
                if len(owners) == 2:
                    break
        finally:
            for c in clients:
                c.close()
        assert len(owners) == 2 and proc.pid not in owners, (owners, workers)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    text = log.read_text()
    assert text.count("Application shutdown complete") == 2 and "Traceback" not in text
    assert not any(Path(f"/proc/{p}").exists() for p in owners), "a worker outlived serve"
