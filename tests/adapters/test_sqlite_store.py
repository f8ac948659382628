from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.stores.sqlite_store import SqliteDocumentStore
from semsearch.core.types import Chunk, Document, EmbedderIdentity
from semsearch.errors import NotFoundError, StorageFullError
from semsearch.ports import DocumentWrite
from tests import full_disk

IDENT = EmbedderIdentity("local", "m", "r1", 4)


def _write(doc: Document, n_chunks: int = 2) -> DocumentWrite:
    chunks = [Chunk(id=f"{doc.id}#{i}", doc_id=doc.id, ordinal=i, text=f"{doc.text} {i}",
                    start=0, end=len(doc.text), title=doc.title) for i in range(n_chunks)]
    return DocumentWrite(doc, doc.content_hash(), chunks, np.ones(4, dtype=np.float32) / 2)


@pytest.fixture
def store(tmp_path: Path) -> SqliteDocumentStore:
    s = SqliteDocumentStore(tmp_path / "s.db")
    s.create_collection("c", IDENT, {"max_tokens": 256})
    return s


def test_unknown_collection_names_known_ones(store: SqliteDocumentStore) -> None:
    with pytest.raises(NotFoundError, match="unknown collection 'nope'; known: c"):
        store.get_collection("nope")


def test_a_full_database_fails_a_write_naming_the_file_and_loses_nothing(
        store: SqliteDocumentStore, tmp_path: Path) -> None:
    store.write("c", [_write(Document("d1", "alpha"))])
    # SQLite's own SQLITE_FULL, as a full disk gives it: no page can be added.
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count={pages}")
    big = [_write(Document(f"b{i}", "x" * 5000)) for i in range(40)]
    with pytest.raises(StorageFullError) as err:
        store.write("c", big)
    assert f"the canonical store {tmp_path / 's.db'}: database or disk is full" in str(err.value)
    info = store.get_collection("c")
    assert (info.documents, info.chunks, info.generation) == (1, 2, 1)  # rolled back whole
    with pytest.raises(StorageFullError):
        store.record_run("c", "index", "2024-01-01T00:00:00+00:00", "ok", {"x": "y" * 50000})
    store._conn.execute("PRAGMA max_page_count=1073741823")
    assert store.write("c", big).generation == 2  # the same store writes again
    assert store.get_collection("c").documents == 41


def test_on_a_full_disk_the_store_reads_and_writes_again_once_space_is_freed(
        tmp_path: Path) -> None:
    if reason := full_disk.unavailable(tmp_path):
        pytest.skip(f"no private tmpfs to fill: {reason}")
    code = """
from semsearch.adapters.stores.sqlite_store import SqliteDocumentStore
from semsearch.core.types import EmbedderIdentity
from semsearch.errors import StorageFullError
ident = EmbedderIdentity("local", "m", "r1", 4)
first = SqliteDocumentStore(mnt / "s.db")
first.create_collection("c", ident, {})
first.close()
fill()
store = SqliteDocumentStore(mnt / "s.db")  # a WAL file whose -shm cannot be created
result["names"] = [c.name for c in store.list_collections()]
try:
    store.create_collection("d", ident, {})
except StorageFullError as exc:
    result["write"] = str(exc)
try:
    SqliteDocumentStore(mnt / "new.db")
except StorageFullError as exc:
    result["new"] = str(exc)
free()
store.create_collection("d", ident, {})
result["after"] = [c.name for c in store.list_collections()]
"""
    (out,) = full_disk.run(tmp_path / "mnt", [{"py": code}], size="1m")
    assert "error" not in out, out["error"]
    r = out["result"]
    mnt = tmp_path / "mnt"
    assert r["names"] == ["c"]
    assert r["write"].startswith(f"cannot write the canonical store {mnt / 's.db'}: ")
    assert "full" in r["write"]
    assert r["new"].startswith(f"cannot open the canonical store {mnt / 'new.db'}: ")
    assert r["after"] == ["c", "d"]
