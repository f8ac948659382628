"""The PostgreSQL store's own concerns beyond the shared ``Store`` contract
(tests/contract/test_store.py runs that against it): schema migrations (idempotent, a dry run
that changes nothing, an older database upgraded in place with its data, two processes
migrating at once), and the failures a user meets (server down, pgvector missing, a schema
newer than the code, a bad SEMSEARCH_STORE), each a clear one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from semsearch.adapters.embedders.fake import FakeEmbedder
from semsearch.adapters.postgres import schema
from semsearch.adapters.postgres.db import Database
from semsearch.adapters.postgres.store import PostgresStore
from semsearch.config import Settings
from semsearch.core.types import Chunk, Document
from semsearch.errors import BackendError, InputError
from semsearch.ports import DocumentWrite

EMBEDDER = FakeEmbedder(dimension=8)


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url, pool_size=2)
    yield database
    database.close()


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'semsearch%'")}


def indexes(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename LIKE 'semsearch%'")}


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    full.update({"SEMSEARCH_NO_PROGRESS": "1", **env})
    return subprocess.run([sys.executable, "-m", "semsearch", *args], capture_output=True,
                          text=True, env=full, timeout=120)


# -- migrations --------------------------------------------------------------------------------

def test_migrations_are_idempotent(db: Database, postgres_url: str) -> None:
    assert schema.current_version(db) == 0
    ran = schema.migrate(db)
    assert any("semsearch_collections" in s for s in ran)
    assert schema.current_version(db) == schema.LATEST
    assert {"semsearch_collections", "semsearch_documents", "semsearch_chunks",
            "semsearch_runs", "semsearch_sync_state", "semsearch_aliases", "semsearch_rejects",
            "semsearch_api_keys", "semsearch_schema"} <= tables(postgres_url)
    assert schema.migrate(db) == [] and schema.migrate(db, dry_run=True) == []
    store = PostgresStore(db, owns_db=False)  # opening a current database migrates nothing
    store.create_collection("c", EMBEDDER.identity, {})
    PostgresStore(db, owns_db=False)
    assert [c.name for c in store.list_collections()] == ["c"]
    with psycopg.connect(postgres_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM semsearch_schema "
                                               "ORDER BY version")]
    assert versions == list(range(1, schema.LATEST + 1))


def test_dry_run_prints_the_sql_and_changes_nothing(postgres_url: str) -> None:
    dry = cli("migrate", "--dry-run", SEMSEARCH_STORE=postgres_url)
    assert dry.returncode == 0, dry.stderr
    assert "CREATE TABLE IF NOT EXISTS semsearch_collections" in dry.stdout
    assert "CREATE EXTENSION IF NOT EXISTS vector;" in dry.stdout
    assert "semsearch_runs_by_collection" in dry.stdout  # every pending migration
    assert "nothing changed" in dry.stdout
    assert tables(postgres_url) == set()

    done = cli("migrate", SEMSEARCH_STORE=postgres_url)
    assert done.returncode == 0, done.stderr
    assert "applied" in done.stdout and "semsearch_collections" in tables(postgres_url)
    again = cli("migrate", "--dry-run", SEMSEARCH_STORE=postgres_url)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_migrate_without_a_shared_store_needs_nothing(tmp_path: Path) -> None:
    out = cli("migrate", SEMSEARCH_HOME=str(tmp_path / "home"))
    assert out.returncode == 0, out.stderr
    assert "needs no migration" in out.stdout


def test_a_store_url_that_is_not_postgresql_is_refused(tmp_path: Path) -> None:
    out = cli("migrate", SEMSEARCH_STORE="mysql://u:hunter2@h/db",
              SEMSEARCH_HOME=str(tmp_path / "home"))
    assert out.returncode == 2
    assert "SEMSEARCH_STORE" in out.stderr and "postgresql://" in out.stderr
    assert "hunter2" not in out.stderr and "Traceback" not in out.stderr


def test_an_older_database_upgrades_in_place_with_its_data(db: Database,
                                                          postgres_url: str) -> None:
    schema.migrate(db, target=1)
    assert schema.current_version(db) == 1
    assert "semsearch_runs_by_collection" not in indexes(postgres_url)
    # What a semsearch of schema 1 wrote: a collection, a document with a chunk, a run.
    ident = EMBEDDER.identity
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO semsearch_collections (name, identity, chunker, generation, "
                     "documents, chunks) VALUES ('old', %s::jsonb, '{}', 1, 1, 1)",
                     (psycopg.types.json.Jsonb(ident.to_dict()),))
        conn.execute("INSERT INTO semsearch_documents (collection, id, title, text, metadata, "
                     "content_hash) VALUES ('old', 'd1', 'T', 'old text', "
                     "'{\"year\": 2001}', 'h1')")
        label = conn.execute(
            "INSERT INTO semsearch_chunks (collection, chunk_id, doc_id, ordinal, text, start, "
            "\"end\", title) VALUES ('old', 'd1#0', 'd1', 0, 'old text', 0, 8, 'T') "
            "RETURNING label").fetchone()[0]
        conn.execute("INSERT INTO semsearch_runs (collection, kind, started_at, finished_at, "
                     "status, stats) VALUES ('old', 'index', 's', 'f', 'ok', '{\"new\": 1}')")

    store = PostgresStore(db, owns_db=False)  # opening it upgrades it
    assert schema.current_version(db) == schema.LATEST
    assert "semsearch_runs_by_collection" in indexes(postgres_url)
    info = store.get_collection("old")
    assert (info.identity, info.generation, info.documents, info.chunks) == (ident, 1, 1, 1)
    assert store.get_document("old", "d1")["metadata"] == {"year": 2001}
    assert store.chunks_by_label("old", [label])[label].chunk.text == "old text"
    assert [r["stats"] for r in store.list_runs("old")] == [{"new": 1}]
    doc = Document("d2", "new text")
    chunk = Chunk("d2#0", "d2", 0, "new text", 0, 8, "")
    written = store.write("old", [DocumentWrite(doc, doc.content_hash(), [chunk],
                                                EMBEDDER.embed(["x"])[0])])
    assert written.generation == 2 and written.added[0][0] > label


def test_two_processes_migrating_at_once_apply_each_migration_once(
        postgres_url: str, db: Database) -> None:
    code = ("import sys; from semsearch.adapters.postgres.db import Database; "
            "from semsearch.adapters.postgres.schema import migrate; "
            "db = Database(sys.argv[1], pool_size=1); print(len(migrate(db))); db.close()")
    # Hold the migration lock so both processes are waiting on it when it is released.
    with psycopg.connect(postgres_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                       (schema.LOCK_CLASS, schema.LOCK_MIGRATE))
        procs = [subprocess.Popen([sys.executable, "-c", code, postgres_url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        deadline = time.monotonic() + 60
        with psycopg.connect(postgres_url, autocommit=True) as watch:
            while watch.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                "AND NOT granted").fetchone()[0] < 2:
                assert time.monotonic() < deadline, "the migrations never queued on the lock"
                time.sleep(0.05)
        holder.commit()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    counts = sorted(int(o[0]) for o in outs)
    assert counts[0] == 0 and counts[1] > 0  # one migrated, the other found it done
    assert schema.current_version(db) == schema.LATEST


def test_a_schema_newer_than_this_semsearch_is_refused(db: Database) -> None:
    schema.migrate(db)
    with db.connection() as conn:
        conn.execute("INSERT INTO semsearch_schema (version) VALUES (%s)", (schema.LATEST + 5,))
    with pytest.raises(BackendError, match="newer than this semsearch"):
        PostgresStore(db, owns_db=False)
    with pytest.raises(BackendError, match="upgrade semsearch"):
        schema.migrate(db, dry_run=True)


# -- failures a user meets ---------------------------------------------------------------------

def test_a_down_server_is_a_clear_error(tmp_path: Path) -> None:
    url = f"postgresql://semsearch:s3cret@/search?host={tmp_path}"  # a socket dir, no server
    db = Database(url, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(BackendError, match="cannot connect to PostgreSQL") as err:
        PostgresStore(db)
    assert time.monotonic() - started < 5  # libpq's answer at once, not a pool timeout
    assert "s3cret" not in str(err.value) and "semsearch:***@" in str(err.value)
    assert "No such file or directory" in str(err.value)  # libpq's reason, named
    db.close()
    out = cli("migrate", SEMSEARCH_STORE=url, SEMSEARCH_HOME=str(tmp_path / "home"))
    assert out.returncode == 2 and "cannot connect to PostgreSQL" in out.stderr
    assert "s3cret" not in out.stderr and "Traceback" not in out.stderr


def test_ping_says_whether_the_database_answers(db: Database, tmp_path: Path) -> None:
    store = PostgresStore(db, owns_db=False)
    assert store.ping() is True
    down = Database(f"postgresql://u@/x?host={tmp_path}", connect_timeout=1)
    assert PostgresStore.ping(_unmigrated(down)) is False
    down.close()


def _unmigrated(db: Database) -> PostgresStore:
    """A store object over ``db`` without the constructor's migration (the server is down)."""
    store = PostgresStore.__new__(PostgresStore)
    store._db, store._owns_db = db, False
    return store


def test_a_server_without_pgvector_is_named(db: Database, postgres_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # This server has pgvector; a missing extension is the same server error for any name.
    first = ["CREATE EXTENSION IF NOT EXISTS semsearch_no_such_extension",
             *schema.MIGRATIONS[0][1:]]
    monkeypatch.setattr(schema, "MIGRATIONS", [first, *schema.MIGRATIONS[1:]])
    with pytest.raises(BackendError, match="pgvector") as err:
        PostgresStore(db, owns_db=False)
    assert "postgresql-NN-pgvector" in str(err.value)
    assert schema.current_version(db) == 0 and tables(postgres_url) == set()  # rolled back


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    from semsearch import wiring

    real = wiring.util.find_spec
    monkeypatch.setattr(wiring.util, "find_spec",
                        lambda name, *a: None if name == "pgvector" else real(name, *a))
    settings = Settings(home=tmp_path, store_url="postgresql://u@/x?host=/nowhere")
    with pytest.raises(BackendError, match=r'pip install -e "\.\[postgres\]"'):
        wiring.make_store(settings)


def test_wiring_opens_the_postgres_store(postgres_url: str, tmp_path: Path) -> None:
    from semsearch.wiring import make_store

    store = make_store(Settings(home=tmp_path, store_url=postgres_url))
    try:
        assert isinstance(store, PostgresStore) and store.ping()
        assert store.list_collections() == []
    finally:
        store.close()


def test_concurrent_first_opens_and_writes_do_not_collide(postgres_url: str) -> None:
    """Several stores opening a new database at once (replicas starting together) all
    migrate safely, then write one collection: one generation per write."""
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []
    lock = threading.Lock()

    def open_and_write(i: int) -> None:
        try:
            store = PostgresStore(Database(postgres_url, pool_size=2))
            with lock:
                stores.append(store)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stores[0].create_collection("c", EMBEDDER.identity, {})

    def write(store: PostgresStore, i: int) -> None:
        try:
            for n in range(5):
                doc = Document(f"{i}-{n}", "t")
                store.write("c", [DocumentWrite(doc, doc.content_hash(), [
                    Chunk(f"{i}-{n}#0", doc.id, 0, "t", 0, 1, "")], EMBEDDER.embed(["t"])[0])])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    info = stores[0].get_collection("c")
    assert (info.generation, info.documents, info.chunks) == (20, 20, 20)
    for s in stores:
        s.close()


@pytest.mark.parametrize(("doc", "problem"), [
    (Document("bad\x00id", "t"), "NUL"),
    (Document("d", "te\x00xt"), "NUL"),
    (Document("d", "t", metadata={"k\x00": 1}), "NUL"),
    (Document("d", "t", metadata={"a": [1, {"b": float("nan")}]}), "nan"),
    (Document("d", "t", metadata={"a": float("inf")}), "inf"),
    (Document("d", "t\ud800"), "surrogate"),
])
def test_what_postgresql_cannot_store_is_refused_whole(db: Database, doc: Document,
                                                       problem: str) -> None:
    store = PostgresStore(db, owns_db=False)
    store.create_collection("c", EMBEDDER.identity, {})
    good = Document("good", "fine")
    batch = [DocumentWrite(good, good.content_hash(), [], EMBEDDER.embed(["t"])[0]),
             DocumentWrite(doc, "h", [], EMBEDDER.embed(["t"])[0])]
    with pytest.raises(InputError, match=problem):
        store.write("c", batch)
    assert store.all_doc_ids("c") == [] and store.get_collection("c").generation == 0


def test_disk_usage_and_vacuum(db: Database) -> None:
    store = PostgresStore(db, owns_db=False)
    store.create_collection("c", EMBEDDER.identity, {})
    docs = [Document(f"d{i}", "some text " * 50) for i in range(200)]
    store.write("c", [DocumentWrite(d, d.content_hash(), [Chunk(f"{d.id}#0", d.id, 0, d.text,
                                                                0, 10, "")],
                                    EMBEDDER.embed(["t"])[0]) for d in docs])
    store.write("c", [], deletes=[d.id for d in docs[:150]])
    usage = store.disk_usage()
    assert usage["bytes"] > 0 and 0 <= usage["reclaimable_bytes"] <= usage["bytes"]
    store.vacuum()
    assert store.all_doc_ids("c") == sorted(d.id for d in docs[150:])
    assert store.disk_usage()["bytes"] > 0
