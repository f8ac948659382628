"""The collection locks and the API keys of the shared backend, on the embedded PostgreSQL:
advisory locks that name their holder and die with a killed holder's connection, and keys
that one process writes and another, already running, sees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from semsearch.adapters.postgres.db import Database
from semsearch.adapters.postgres.keys import PgKeyStorage
from semsearch.adapters.postgres.locks import PgLocks
from semsearch.api.auth import KeyStore
from semsearch.api.errors import ApiError
from semsearch.errors import BackendError, BusyError, NotFoundError

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from semsearch.adapters.postgres.db import Database
from semsearch.adapters.postgres.locks import PgLocks
with PgLocks(Database(sys.argv[1])).hold(sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url, pool_size=2)
    try:
        yield database
    finally:
        database.close()


def _holder(url: str, collection: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, collection],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_collection_is_refused_naming_the_holder_and_freed_on_exit(db: Database,
                                                                          postgres_url: str
                                                                          ) -> None:
    first, second = PgLocks(db), PgLocks(Database(postgres_url, pool_size=1))
    with first.hold("docs"):
        with pytest.raises(BusyError) as busy, second.hold("docs"):
            pytest.fail("two holders of one collection")
        message = str(busy.value)
        assert message.startswith("collection 'docs' is already being synced (")
        assert message.endswith("); this run did nothing")
        assert f"pid {os.getpid()}" in message and "PostgreSQL backend pid" in message
        with second.hold("other"):  # one lock per collection, not one for all
            pass
    with second.hold("docs"):  # released on exit
        pass


def test_a_killed_holder_leaves_no_stuck_lock(db: Database, postgres_url: str) -> None:
    proc = _holder(postgres_url, "docs")
    try:
        with pytest.raises(BusyError, match=rf"pid {proc.pid}\b"), PgLocks(db).hold("docs"):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # The server notices the dead connection at once: no timeout to wait out.
    deadline = time.monotonic() + 5
    while True:
        try:
            with PgLocks(db).hold("docs"):
                break
        except BusyError:
            assert time.monotonic() < deadline, "the killed holder's lock stayed"
            time.sleep(0.05)


def test_keys_written_by_one_process_are_seen_by_another(db: Database,
                                                        postgres_url: str) -> None:
    server = KeyStore(PgKeyStorage(db, version_ttl=0.0))  # a running server
    assert not server.enabled and server.authenticate(None).name == "anonymous"
    other = Database(postgres_url, pool_size=1)  # `semsearch keys` on another machine
    cli = KeyStore(PgKeyStorage(other, owns_db=True))
    try:
        key = cli.create("ci", {"docs": "read"})
        assert server.authenticate(key).name == "ci"
        assert server.authenticate(key).allows("docs", "read")
        with pytest.raises(ApiError) as no_key:
            server.authenticate(None)
        assert no_key.value.status == 401
        replaced = cli.create("ci", {"*": "admin"})  # same name: replaced, old key refused
        assert server.authenticate(replaced).allows("anything", "admin")
        with pytest.raises(ApiError):
            server.authenticate(key)
        stored = db.run(lambda c: c.execute("SELECT sha256 FROM semsearch_api_keys").fetchall())
        assert key not in str(stored) and replaced not in str(stored)  # hashes only
        cli.revoke("ci")
        assert server.authenticate(replaced).name == "anonymous"  # no key left: open again
        with pytest.raises(NotFoundError, match="no API key named 'ci' in table"):
            cli.revoke("ci")
    finally:
        cli.close()


def test_a_server_checks_the_table_at_most_once_a_second(db: Database) -> None:
    storage = PgKeyStorage(db, version_ttl=1.0)
    server = KeyStore(storage)
    assert storage.version() is storage.version()  # remembered: no query per request
    writer = KeyStore(PgKeyStorage(db))
    key = writer.create("ci", {"*": "read"})
    deadline = time.monotonic() + 3
    while server.authenticate(key).name != "ci":  # seen within the second
        assert time.monotonic() < deadline, "a new key never reached the running server"
        time.sleep(0.05)


def test_an_unreachable_database_keeps_the_last_keys(tmp_path: Path) -> None:
    from tests.pgserver import PgServer

    pg = PgServer(tmp_path)
    stopped = False
    try:
        _, url = pg.new_database()
        db = Database(url, pool_size=1, connect_timeout=2, retries=0)
        server = KeyStore(PgKeyStorage(db, version_ttl=0.0))
        key = KeyStore(PgKeyStorage(db)).create("ci", {"*": "read"})
        assert server.authenticate(key).name == "ci"
        pg.stop()
        stopped = True
        assert server.authenticate(key).name == "ci"  # last good keys, no error
        with pytest.raises(ApiError):
            server.authenticate("ss_wrong")
        with pytest.raises(BackendError, match=r"PostgreSQL at .* unreachable"):
            PgKeyStorage(db, version_ttl=0.0).load()  # e.g. `semsearch keys list`: clear
        db.close()
    finally:
        if not stopped:
            pg.stop()
