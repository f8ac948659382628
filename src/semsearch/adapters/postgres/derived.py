"""What the PostgreSQL derived indexes share: table names derived from the collection name,
the small table recording which canonical-store generation each index reflects, and the
once-per-process creation of both (DDL serialized by a transaction-level advisory lock, so
two processes opening the same collection at once do not race on ``CREATE TABLE``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from psycopg import sql

from semsearch.adapters.postgres.db import Database, _first_line
from semsearch.errors import BackendError

T = TypeVar("T")
STATE_TABLE = "semsearch_index_state"
_DDL_LOCK = "semsearch-index-ddl"


@contextmanager
def translated(what: str) -> Iterator[None]:
    """A database error (a statement timeout, a full disk) as a ``BackendError`` that says
    what was being done, never a driver traceback."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise BackendError(f"PostgreSQL failed while {what}: {_first_line(exc)}") from exc


def run(db: Database, fn: Callable[[Any], T], what: str) -> T:
    with translated(what):
        return db.run(fn, what=what)


@contextmanager
def connection(db: Database, what: str) -> Iterator[Any]:
    with translated(what), db.connection() as conn:
        yield conn


def table_name(prefix: str, collection: str) -> str:
    """A collection name may be any text; a table name is at most 63 bytes of identifier."""
    return f"semsearch_{prefix}_{hashlib.sha1(collection.encode()).hexdigest()[:16]}"


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def ddl_lock(conn: Any) -> None:
    """Inside a transaction: one DDL writer at a time across processes."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_DDL_LOCK,))


def ensure_state_table(conn: Any) -> None:
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (collection TEXT NOT NULL, kind TEXT NOT NULL, "
        "generation BIGINT NOT NULL, PRIMARY KEY (collection, kind))").format(
            ident(STATE_TABLE)))


def read_generation(db: Database, collection: str, kind: str) -> int:
    with connection(db, "reading index state") as conn:
        row = conn.execute(sql.SQL("SELECT generation FROM {} WHERE collection = %s AND "
                                   "kind = %s").format(ident(STATE_TABLE)),
                           (collection, kind)).fetchone()
    return -1 if row is None else int(row[0])


def write_generation(conn: Any, collection: str, kind: str, generation: int) -> None:
    conn.execute(sql.SQL(
        "INSERT INTO {} (collection, kind, generation) VALUES (%s, %s, %s) "
        "ON CONFLICT (collection, kind) DO UPDATE SET generation = EXCLUDED.generation"
    ).format(ident(STATE_TABLE)), (collection, kind, int(generation)))


def forget_generation(conn: Any, collection: str, kind: str | None = None) -> None:
    if kind is None:
        conn.execute(sql.SQL("DELETE FROM {} WHERE collection = %s").format(
            ident(STATE_TABLE)), (collection,))
    else:
        conn.execute(sql.SQL("DELETE FROM {} WHERE collection = %s AND kind = %s").format(
            ident(STATE_TABLE)), (collection, kind))


def relation_bytes(db: Database, tables: list[str]) -> int:
    """Heap, indexes and TOAST of the tables that exist (0 for the others)."""
    with connection(db, "reading index state") as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) "
            "FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL",
            (tables,)).fetchone()
    return int(row[0]) if row else 0


def table_exists_in(conn: Any, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def table_exists(db: Database, table: str) -> bool:
    with connection(db, "reading index state") as conn:
        return table_exists_in(conn, table)
