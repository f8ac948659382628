"""Keyword indexes written before the title had a field of its own still open: the FTS5
file (one ``body`` column) and the PostgreSQL postings (no ``ttf``) are dropped with their
generation, so the engine rebuilds them from the store; an engine over such an index
answers as before, then lifts titles when asked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex
from semsearch.adapters.postgres import derived
from semsearch.adapters.postgres.db import Database
from semsearch.adapters.postgres.keyword import KIND, PgKeywordIndex, keyword_tables
from semsearch.config import Settings
from semsearch.core.analysis import Analyzer
from semsearch.core.types import Document, Mode
from semsearch.runtime.engine import Engine
from semsearch.services.ingest import index_documents
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine


def _old_fts5(path: Path, rows: list[tuple[int, str]], generation: int) -> None:
    """The file as semsearch wrote it before titles had a column."""
    analyzer = Analyzer()
    db = sqlite3.connect(path)
    db.execute("CREATE VIRTUAL TABLE terms USING fts5(body, tokenize='unicode61', "
               "detail=full)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
    db.executemany("INSERT INTO terms (rowid, body) VALUES (?, ?)",
                   [(label, " ".join(analyzer.terms(text))) for label, text in rows])
    db.execute("INSERT INTO meta VALUES ('generation', ?)", (generation,))
    db.commit()
    db.close()


def test_an_old_fts5_file_opens_empty_with_no_generation(tmp_path: Path) -> None:
    path = tmp_path / "keyword.db"
    _old_fts5(path, [(1, "Foxes\nA fox in the forest")], 5)
    idx = Fts5KeywordIndex(path)
    assert idx.generation == -1 and len(idx) == 0  # rebuilt by whoever opened it
    idx.add([(1, "A fox in the forest", "Foxes")])
    idx.save(6)
    idx.close()
    again = Fts5KeywordIndex(path)
    assert again.generation == 6
    assert [lb for lb, _ in again.search("fox", 5, title_weight=2.0)] == [1]
    again.close()


@pytest.mark.embedded_only(reason="writes an old-layout FTS5 file in the home")
def test_an_engine_rebuilds_an_old_fts5_index_from_the_store(settings: Settings) -> None:
    docs = [Document("a", "three foxes: fox, fox and fox", title="Notes"),
            Document("b", "a short note", title="The fox")]
    engine = open_engine(settings)
    try:
        index_documents(engine, "animals", docs)
        version = engine.collection("animals").version
        generation = engine.store.get_collection(version).generation
    finally:
        engine.close()
    files = list(settings.home.rglob("keyword.db"))
    assert len(files) == 1, files
    for suffix in ("", "-wal", "-shm"):
        Path(f"{files[0]}{suffix}").unlink(missing_ok=True)
    _old_fts5(files[0], [(1, "stale")], generation)  # current generation, old layout
    engine = open_engine(settings)
    try:
        assert _keyword(engine, None) == ["a", "b"]
        assert _keyword(engine, 5.0) == ["b", "a"]
    finally:
        engine.close()


def _keyword(engine: Engine, title_weight: float | None) -> list[str]:
    req = SearchRequest("fox", mode=Mode.KEYWORD, title_weight=title_weight)
    return [h.doc_id for h in search(engine, "animals", req).hits]


@pytest.mark.postgres
def test_old_postgres_keyword_tables_are_dropped_and_rebuilt(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        postings, lengths, stats = keyword_tables("old")
        with db.connection() as conn:
            conn.execute(f'CREATE TABLE "{postings}" (term TEXT NOT NULL, label BIGINT NOT '
                         'NULL, tf INT NOT NULL, PRIMARY KEY (term, label) INCLUDE (tf))')
            conn.execute(f'CREATE TABLE "{lengths}" (label BIGINT PRIMARY KEY, len INT NOT '
                         'NULL)')
            conn.execute(f'CREATE TABLE "{stats}" (one BOOLEAN PRIMARY KEY DEFAULT TRUE '
                         'CHECK (one), docs BIGINT NOT NULL, total BIGINT NOT NULL)')
            conn.execute(f'INSERT INTO "{postings}" VALUES (\'fox\', 1, 1)')
            conn.execute(f'INSERT INTO "{lengths}" VALUES (1, 1)')
            conn.execute(f'INSERT INTO "{stats}" (docs, total) VALUES (1, 1)')
            derived.ensure_state_table(conn)
            derived.write_generation(conn, "old", KIND, 9)
        idx = PgKeywordIndex(db, "old")
        assert idx.generation == -1 and len(idx) == 0
        idx.add([(1, "A fox in the forest", "Foxes"), (2, "fox fox fox", "")])
        assert [lb for lb, _ in idx.search("fox", 5)] == [2, 1]
        assert [lb for lb, _ in idx.search("fox", 5, title_weight=10.0)] == [1, 2]
        again = PgKeywordIndex(db, "old")  # the new layout is kept on a reopen
        assert len(again) == 2
    finally:
        db.close()
