"""Source databases for the sync tests: a private database on the machine's real PostgreSQL
(127.0.0.1:5432) or MariaDB (127.0.0.1:3306), created for each test and dropped after it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from semsearch.runtime.engine import Engine
from semsearch.services.sync_config import SourceSpec

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIA_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"
T0 = dt.datetime(2026, 11, 1, 12, 0, 0)

PRODUCTS = """
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    title VARCHAR(200),
    description TEXT,
    category VARCHAR(50),
    price NUMERIC(10, 2),
    updated_at TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
)"""

WORDS = [
    "steel", "hammer", "garden", "hose", "copper", "kettle", "wool", "blanket", "oak", "table",
    "lamp", "shade", "ceramic", "mug", "leather", "boots", "rain", "jacket", "bicycle", "pump",
    "glass", "vase",
]


def describe(i: int, version: int = 0) -> str:
    a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
    extra = f" Revised edition {version} with a {b} finish." if version else ""
    return f"Product {i} is a durable {a} for everyday use, paired with a {b}.{extra}"


@dataclass
class SourceDb:
    """One private source database and helpers to change it between sync runs."""

    url: str
    engine: sa.Engine

    def exec(self, sql: str, params: Sequence[dict[str, Any]] | dict[str, Any] = ()) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params or {})

    def insert(self, ids: Sequence[int], at: dt.datetime = T0, version: int = 0) -> None:
        self.exec("INSERT INTO products (id, title, description, category, price, updated_at)"
                  " VALUES (:id, :title, :d, :c, :p, :u)",
                  [{"id": i, "title": f"Item {i}", "d": describe(i, version),
                    "c": ("tools", "garden", "home")[i % 3], "p": 5 + i % 40 + 0.99,
                    "u": at} for i in ids])

    def update(self, ids: Sequence[int], at: dt.datetime, version: int = 1) -> None:
        for i in ids:
            self.exec("UPDATE products SET description = :d, updated_at = :u WHERE id = :id",
                      {"d": describe(i, version), "u": at, "id": i})

    def live_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(str(r[0]) for r in conn.execute(sa.text(
                "SELECT id FROM products WHERE NOT is_deleted AND description IS NOT NULL")))

    def spec(self, collection: str = "products", **over: Any) -> SourceSpec:
        base: dict[str, Any] = dict(
            collection=collection, source=self.url, table="products", id="id",
            text=("description",), title="title", metadata=("category", "price"),
            updated_at="updated_at", deleted_flag="is_deleted", lookback_seconds=0.0,
            batch_size=16)
        base.update(over)
        return SourceSpec(**base).validate()


def _private_db(admin_url: str, quote: str) -> Iterator[tuple[str, str]]:
    name = f"semsearch_t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quote}{name}{quote}"))
    try:
        yield admin_url.rsplit("/", 1)[0], name
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if admin_url.startswith("postgresql") else ""
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{force}"))
        admin.dispose()


def _products_db(admin_url: str, quote: str) -> Iterator[SourceDb]:
    for base, name in _private_db(admin_url, quote):
        url = f"{base}/{name}"
        engine = sa.create_engine(url)
        db = SourceDb(url=url, engine=engine)
        db.exec(PRODUCTS)
        yield db
        engine.dispose()


@pytest.fixture
def pg() -> Iterator[SourceDb]:
    yield from _products_db(PG_ADMIN, '"')


@pytest.fixture
def maria() -> Iterator[SourceDb]:
    yield from _products_db(MARIA_ADMIN.rstrip("/") + "/mysql", "`")


def collection_state(engine: Engine, collection: str) -> dict[str, Any]:
    """What 'the index equals a clean run' means: the same documents with the same content,
    the same chunks (no duplicates, none missing), and derived indexes holding exactly the
    store's chunks."""
    store = engine.store
    docs = {d: store.get_document(collection, d) for d in store.all_doc_ids(collection)}
    chunks: list[tuple[str, str, int, str]] = []
    labels: list[int] = []
    for batch in store.iter_chunks(collection):
        for s in batch:
            chunks.append((s.chunk.doc_id, s.chunk.id, s.chunk.ordinal, s.chunk.text))
            labels.append(s.label)
    assert len({c[1] for c in chunks}) == len(chunks), "duplicate chunk ids"
    idx = engine.collection(collection).indexes()
    assert len(idx.vectors) == len(labels), "vector index disagrees with the store"
    assert len(idx.keyword) == len(labels), "keyword index disagrees with the store"
    return {"docs": {k: (v["title"], v["text"], v["metadata"], v["content_hash"])
                     for k, v in docs.items()},
            "chunks": sorted(chunks)}


def search_ids(engine: Engine, collection: str, query: str) -> list[str]:
    from semsearch.services.search import SearchRequest, search

    return [h.doc_id for h in search(engine, collection, SearchRequest(query=query, k=5)).hits]
