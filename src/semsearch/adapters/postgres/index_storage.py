"""The shared backend's derived indexes: tables in the database (pgvector for vectors, BM25
postings for keywords) instead of files under the home, and a PostgreSQL advisory lock
instead of a ``.lock`` file. The lock is session-level, held on a pooled connection of its
own: a holder that dies takes its connection, and so its lock, with it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import sql

from semsearch.adapters.postgres import derived
from semsearch.adapters.postgres.db import Database
from semsearch.adapters.postgres.keyword import PgKeywordIndex, keyword_tables
from semsearch.adapters.postgres.vectors import PgVectorIndex, vector_table
from semsearch.ports import KeywordIndex, VectorIndex

LOCK_SQL = "SELECT pg_advisory_lock(hashtextextended('semsearch-index:' || %s, 0))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtextextended('semsearch-index:' || %s, 0))"


class PgIndexStorage:
    # One durable copy in the database for every process: batches are written through and
    # stamped at once (see runtime.indexes.CollectionIndexes.durable).
    shared = True

    def __init__(self, db: Database, *, vector_type: str = "vector",
                 ef_search: int = 256) -> None:
        self._db = db
        self._vector_type = vector_type
        self._ef_search = ef_search

    @staticmethod
    def _tables(collection: str) -> list[str]:
        return [vector_table(collection), *keyword_tables(collection)]

    def open(self, collection: str, dimension: int) -> tuple[VectorIndex, KeywordIndex]:
        return (PgVectorIndex(self._db, collection, dimension, vector_type=self._vector_type,
                              ef_search=self._ef_search),
                self.open_keyword(collection))

    def open_keyword(self, collection: str) -> KeywordIndex:
        """The keyword half alone: for a storage that keeps the vectors elsewhere."""
        return PgKeywordIndex(self._db, collection)

    @contextmanager
    def lock(self, collection: str) -> Iterator[None]:
        """Waits as long as the holder holds (no statement timeout on the wait)."""
        with derived.connection(self._db, "holding the index lock") as conn:
            conn.execute("SET statement_timeout = 0")
            try:
                conn.execute(LOCK_SQL, (collection,))
            finally:
                conn.execute("RESET statement_timeout")
            try:
                yield
            finally:
                # A connection that died took the lock with it; the pool discards it.
                with contextlib.suppress(Exception):
                    conn.execute(UNLOCK_SQL, (collection,))

    def exists(self, collection: str) -> bool:
        return any(derived.table_exists(self._db, t) for t in self._tables(collection))

    def disk_bytes(self, collection: str) -> int:
        return derived.relation_bytes(self._db, self._tables(collection))

    def remove(self, collection: str) -> None:
        tables = self._tables(collection)

        def drop(conn: Any) -> None:
            derived.ddl_lock(conn)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                sql.SQL(", ").join(derived.ident(t) for t in tables)))
            if derived.table_exists_in(conn, derived.STATE_TABLE):
                derived.forget_generation(conn, collection)

        derived.run(self._db, drop, "removing derived indexes")

    def point(self, alias: str, collection: str) -> None:
        """Tables have no names of their own to move: the store's alias is the only one."""

    def unpoint(self, alias: str) -> None:
        """Nothing to forget: see ``point``."""

    def ping(self) -> bool:
        """The tables live in the store's database, which the store's own ping checks."""
        return True

    def close(self) -> None:
        """The pool is the store's, closed with it."""
