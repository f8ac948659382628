"""Many processes, one PostgreSQL: the promises of the shared backend, kept by real
processes. Two ``semsearch serve`` on loopback ports and CLI runs (``sync``, ``reindex``,
``rollback``, ``keys``), each with a home of its own (only the embedding cache lives there)
and SEMSEARCH_STORE pointing at one database; the fake embedder keeps them fast.

- a write through one server is found by a search on the other as soon as it returns;
- a swap or a rollback made by a CLI process is served by both servers at once;
- one sync per collection across processes: a second is refused (exit 3) naming the holder;
- a sync killed with kill -9 leaves no half-written batch and no stuck lock;
- an API key created by one process works on a running server, and revoked, fails;
- /readyz turns false while the database is down, and true again when it is back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from semsearch.config import Settings
from semsearch.core.types import InputType
from semsearch.wiring import open_engine
from tests.default_path import modules_loaded_by_default
from tests.serving import serve_process

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "glacier", "harbor",
         "iris", "jade"]

# A process that holds a collection's lock until killed: another machine's sync, say.
HOLDER = """
import sys, time
from semsearch.adapters.postgres.db import Database
from semsearch.adapters.postgres.locks import PgLocks
with PgLocks(Database(sys.argv[1])).hold(sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


@dataclass
class Shared:
    url: str
    root: Path
    models: Path

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """The environment of one process on its own 'machine' (its own home)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SEMSEARCH_") or k == "SEMSEARCH_TEST_STORE"}
        env.pop("SEMSEARCH_TEST_STORE", None)
        env.update(SEMSEARCH_STORE=self.url, SEMSEARCH_HOME=str(self.root / name),
                   SEMSEARCH_EMBEDDER="fake", SEMSEARCH_NO_PROGRESS="1",
                   SEMSEARCH_MODEL_CACHE_DIR=str(self.models),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), **extra)
        return env

    def cli(self, name: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "semsearch", *args], capture_output=True,
                              text=True, env=self.env(name, **extra), timeout=180, cwd=self.root)

    def settings(self, name: str) -> Settings:
        return Settings(store_url=self.url, home=self.root / name,
                        embedder="fake", model_cache_dir=self.models)


@pytest.fixture
def shared(postgres_url: str, tmp_path: Path) -> Shared:
    return Shared(postgres_url, tmp_path, tmp_path / "models")




def _wait(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[str]:
    with serve_process(env, log, cwd=log.parent) as (url, _proc):
        yield url
    log_text = log.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text


@contextmanager
def two_servers(shared: Shared) -> Iterator[tuple[str, str]]:
    with serving(shared.env("server1"), shared.root / "server1.log") as one, \
            serving(shared.env("server2"), shared.root / "server2.log") as two:
        yield one, two


def _search(server: str, query: str, mode: str = "hybrid", collection: str = "docs",
            key: str = "") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server + "/search", json={"query": query, "collection": collection,
                                                "mode": mode, "k": 10},
                      headers=headers, timeout=30)


def _hits(server: str, query: str, mode: str = "hybrid") -> tuple[list[str], str]:
    r = _search(server, query, mode)
    assert r.status_code == 200, r.text
    body = r.json()
    return [h["doc_id"] for h in body["hits"]], body["version"]


def _docs(n: int, prefix: str = "d") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "text": f"A field note about the {WORDS[i]} "
             f"{WORDS[i]} {WORDS[i]}, written by hand number {i}.",
             "metadata": {"n": i}} for i in range(n)]


def _folder(root: Path, n: int) -> Path:
    folder = root / "corpus"
    folder.mkdir(exist_ok=True)
    for doc in _docs(n):
        (folder / f"{doc['id']}.md").write_text(doc["text"] + "\n", encoding="utf-8")
    return folder


def test_a_write_through_one_server_is_found_on_the_other_at_once(shared: Shared) -> None:
    with two_servers(shared) as (one, two):
        assert httpx.post(one + "/collections", json={"name": "docs"}).status_code == 201
        for i, doc in enumerate(_docs(6)):
            r = httpx.post(one + "/collections/docs/documents", json={"documents": [doc]},
                           timeout=30)
            assert r.status_code == 200, r.text
            for mode in ("keyword", "dense", "hybrid"):  # at once: no waiting, no retry
                ids, _ = _hits(two, WORDS[i], mode)
                assert ids and ids[0] == doc["id"], (mode, i, ids)
        # A replacement through the second server, a deletion through the first.
        r = httpx.post(two + "/collections/docs/documents", timeout=30, json={"documents": [
            {"id": "d0", "text": "The quartz quartz quartz entry replaced the old one."}]})
        assert r.status_code == 200, r.text
        assert _hits(one, "quartz", "keyword")[0] == ["d0"]
        assert "d0" not in _hits(one, "amber", "keyword")[0]
        r = httpx.request("DELETE", one + "/collections/docs/documents/d1", timeout=30)
        assert r.status_code in (200, 204), r.text
        assert "d1" not in _hits(two, "basalt", "keyword")[0]
        assert "d1" not in _hits(two, "basalt", "dense")[0]
        listed = httpx.get(two + "/collections").json()["collections"]
        assert [(c["name"], c["documents"]) for c in listed] == [("docs", 5)]


def test_a_swap_or_rollback_by_a_cli_process_is_served_by_both_servers(shared: Shared
                                                                     ) -> None:
    folder = _folder(shared.root, 8)
    made = shared.cli("indexer", "index", str(folder), "-c", "docs")
    assert made.returncode == 0, made.stderr
    with two_servers(shared) as (one, two):
        before = {_hits(s, "cobalt")[1] for s in (one, two)}
        assert len(before) == 1, before
        old = before.pop()
        swapped = shared.cli("admin", "reindex", "-c", "docs", "--chunk-max-tokens", "64",
                             "--json")
        assert swapped.returncode == 0, swapped.stderr
        report = json.loads(swapped.stdout)
        new = report["version"]
        assert report["swapped"] and report["previous"] == old, report
        assert new != old and new.startswith("docs@"), (old, new)
        for server in (one, two):  # the next search after the swap: the new version
            ids, version = _hits(server, "cobalt")
            assert version == new and ids[0] == "d2.md", (server, version, ids)
        back = shared.cli("admin", "rollback", "-c", "docs")
        assert back.returncode == 0, back.stderr
        for server in (one, two):
            ids, version = _hits(server, "cobalt")
            assert version == old and ids[0] == "d2.md", (server, version, ids)


@contextmanager
def holding(shared: Shared, collection: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, shared.url, collection],
                            stdout=subprocess.PIPE, text=True, env=shared.env("holder"))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def test_one_sync_per_collection_across_processes(shared: Shared) -> None:
    folder = _folder(shared.root, 4)
    with holding(shared, "docs") as holder:
        refused = shared.cli("cron", "sync", "--source", str(folder), "-c", "docs")
        assert refused.returncode == 3, (refused.returncode, refused.stderr)
        assert "collection 'docs' is already being synced" in refused.stderr
        assert f"pid {holder.pid}" in refused.stderr  # the holder's process, on its machine
        assert "this run did nothing" in refused.stderr and "Traceback" not in refused.stderr
        other = shared.cli("cron", "sync", "--source", str(folder), "-c", "other")
        assert other.returncode == 0, other.stderr  # another collection is not blocked
    # The holder was killed -9: its lock went with its connection, at once.
    done = shared.cli("cron", "sync", "--source", str(folder), "-c", "docs")
    assert done.returncode == 0, done.stderr


def _consistent(shared: Shared, collection: str, dense: bool = True,
                word_of: Callable[[int], str] = WORDS.__getitem__) -> int:
    """Open the collection as a new process would: its indexes agree with the store (every
    stored chunk in both indexes, nothing else), and every stored document is found by its
    own word (by BM25, and with ``dense`` by the fake embedder's vectors too)."""
    engine = open_engine(shared.settings("checker"))
    try:
        handle = engine.collection(collection)
        info = handle.info
        idx = engine.fresh_indexes(info)
        labels = {sc.label for batch in engine.store.iter_chunks(info.name) for sc in batch}
        assert len(labels) == info.chunks
        assert len(idx.vectors) == len(labels) and len(idx.keyword) == len(labels)
        ids = engine.store.all_doc_ids(info.name)
        assert len(ids) == info.documents
        for doc_id in ids:
            number = int(doc_id.removeprefix("d").removesuffix(".md"))
            word = word_of(number)
            if dense:
                query = engine.embedder.embed([word], InputType.QUERY)
                near = idx.vectors.search(query[0], 1)
                found = engine.store.doc_ids_by_label(info.name, [label for label, _ in near])
                assert list(found.values()) == [doc_id], (doc_id, found)
            keyword = idx.keyword.search(word, 1)
            found = engine.store.doc_ids_by_label(info.name, [label for label, _ in keyword])
            assert list(found.values()) == [doc_id], (doc_id, found)
        return len(ids)
    finally:
        engine.close()


@pytest.mark.parametrize("point", ["after_commit=2", "before_save=1"])
def test_a_killed_sync_leaves_no_half_batch_and_no_stuck_lock(shared: Shared,
                                                              point: str) -> None:
    folder = _folder(shared.root, 10)
    killed = shared.cli("cron", "sync", "--source", str(folder), "-c", "docs",
                        "--batch-size", "3", SEMSEARCH_FAILPOINTS=point)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    kept = _consistent(shared, "docs")
    # Whole batches only: two committed batches of three, or all ten before the save.
    assert kept == (6 if point.startswith("after_commit") else 10), kept
    started = time.monotonic()
    rerun = shared.cli("cron2", "sync", "--source", str(folder), "-c", "docs",
                       "--batch-size", "3")
    assert rerun.returncode == 0, rerun.stderr  # the lock was free at once, on another home
    assert time.monotonic() - started < 60
    assert _consistent(shared, "docs") == 10


def test_keys_created_anywhere_reach_a_running_server_and_revoking_refuses(shared: Shared
                                                                          ) -> None:
    with serving(shared.env("server1"), shared.root / "server1.log") as server:
        assert httpx.post(server + "/collections", json={"name": "docs"}).status_code == 201
        made = shared.cli("laptop", "keys", "create", "ci", "--scope", "*:admin")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("ss_") and "semsearch_api_keys" in made.stderr
        listed = shared.cli("elsewhere", "keys", "list")
        assert listed.stdout.splitlines() == ["ci: *:admin"], listed.stdout
        assert not (shared.root / "laptop" / "api_keys.json").exists()  # nothing on disk
        # Within a second the server asks for a key, and accepts this one.
        _wait(lambda: _search(server, "amber").status_code == 401, "the key never arrived")
        assert _search(server, "amber", key=key).status_code == 200
        other = shared.cli("laptop", "keys", "create", "ops", "--scope", "docs:read")
        assert other.returncode == 0, other.stderr
        _wait(lambda: _search(server, "amber", key=other.stdout.strip()).status_code == 200,
              "the second key never arrived")
        gone = shared.cli("laptop2", "keys", "revoke", "ci")
        assert gone.returncode == 0, gone.stderr
        _wait(lambda: _search(server, "amber", key=key).status_code == 401,
              "the revoked key still works")
        assert _search(server, "amber", key=other.stdout.strip()).status_code == 200
        unknown = shared.cli("laptop", "keys", "revoke", "nobody")
        assert unknown.returncode == 2 and "no API key named 'nobody'" in unknown.stderr


def test_readyz_is_false_while_the_database_is_down(tmp_path: Path) -> None:
    from tests.pgserver import PgServer

    (tmp_path / "pg").mkdir()
    pg = PgServer(tmp_path / "pg")
    try:
        _, url = pg.new_database()
        shared = Shared(url, tmp_path, tmp_path / "models")
        with serving(shared.env("server1"), tmp_path / "server1.log") as server:
            assert httpx.get(server + "/readyz").json() == {"ready": True}
            pg.stop()
            _wait(lambda: httpx.get(server + "/readyz", timeout=10).status_code == 503,
                  "/readyz stayed true with the database down", timeout=15)
            body = httpx.get(server + "/readyz", timeout=10).json()
            assert body["ready"] is False and "store" in body["reason"]
            pg = PgServer(tmp_path / "pg")  # the same data directory, started again
            _wait(lambda: httpx.get(server + "/readyz", timeout=10).status_code == 200,
                  "/readyz stayed false after the database came back", timeout=30)
    finally:
        pg.stop()


def test_the_default_imports_nothing_of_postgresql(tmp_path: Path) -> None:
    """Without SEMSEARCH_STORE: the engine, the API and its keys as before, on local files,
    with no PostgreSQL driver or pool imported."""
    assert modules_loaded_by_default(tmp_path, "m.split('.')[0] in ('psycopg', "
                                     "'psycopg_pool', 'pgvector') or 'postgres' in m") == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.db", "semsearch.db"]


def test_halfvec_stores_vectors_in_half_precision_and_finds_the_same(shared: Shared) -> None:
    import psycopg

    folder = _folder(shared.root, 6)
    half = {"SEMSEARCH_STORE_VECTOR_TYPE": "halfvec"}
    made = shared.cli("indexer", "index", str(folder), "-c", "docs", **half)
    assert made.returncode == 0, made.stderr
    with psycopg.connect(shared.url) as conn:
        types = {r[0] for r in conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND NOT a.attisdropped "
            "AND format_type(atttypid, atttypmod) ~ '^(half)?vec'")}
    assert types and all(t.startswith("halfvec") for t in types), types
    for i, word in enumerate(WORDS[:6]):
        found = shared.cli("reader", "search", word, "-c", "docs", "--mode", "dense", "--json",
                           **half)
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["hits"][0]["doc_id"] == f"d{i}.md"


def test_an_index_run_killed_mid_way_keeps_whole_batches_only(shared: Shared) -> None:
    """kill -9 of `semsearch index` at a moment picked by watching the database from
    outside: whole batches or nothing, indexes in step after the next open, and the next run
    (from another home) finishes the job."""
    import psycopg

    folder = shared.root / "big"
    folder.mkdir()
    for i in range(400):
        (folder / f"d{i}.md").write_text(f"Entry marker{i} of the ledger, line {i}.\n")
    proc = subprocess.Popen([sys.executable, "-m", "semsearch", "index", str(folder), "-c",
                             "docs", "--batch-size", "5"], env=shared.env("indexer"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    with psycopg.connect(shared.url, autocommit=True) as conn:
        while time.monotonic() < deadline and proc.poll() is None:
            row = conn.execute("SELECT generation FROM semsearch_collections WHERE name = "
                               "'docs'").fetchone() if conn.execute(
                "SELECT to_regclass('semsearch_collections')").fetchone()[0] else None
            if row is not None and row[0] >= 3:
                break
            time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    kept = _consistent(shared, "docs", dense=False, word_of="marker{}".format)
    assert 0 < kept < 400 and kept % 5 == 0, kept  # whole batches of five, never part of one
    rerun = shared.cli("indexer2", "index", str(folder), "-c", "docs", "--batch-size", "50")
    assert rerun.returncode == 0, rerun.stderr
    assert _consistent(shared, "docs", dense=False, word_of="marker{}".format) == 400
