"""Collection locks as PostgreSQL advisory locks, so one sync, re-index or swap per
collection holds across every machine sharing the database.

Each held lock owns a connection of its own (outside the pool, which it would otherwise
starve): a session-level advisory lock lives exactly as long as its connection, so a run
killed with kill -9 loses its connection and PostgreSQL releases the lock at once; nothing
is ever left to expire or to clean up by hand."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from semsearch.adapters.postgres.db import Database
from semsearch.errors import BackendError, BusyError

# The key every process derives from a collection name: a 64-bit hash computed by the
# server itself, so clients in any language agree on it.
_KEY_SQL = "SELECT hashtextextended('semsearch-collection:' || %s, 0)"

_HOLDER_SQL = """
SELECT a.pid, host(a.client_addr), a.application_name, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 1
"""


def application_name() -> str:
    """What a holder shows in pg_stat_activity: which machine and process to look at."""
    return f"semsearch lock {socket.gethostname()} pid {os.getpid()}"[:63]


class PgLocks:
    """``CollectionLocks`` over ``pg_try_advisory_lock``; a refused run names the holder
    (its server pid, client address, application name and since when) as FileLocks does."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self._db.url, autocommit=True, connect_timeout=10,
                                   application_name=application_name())
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise BackendError(f"PostgreSQL at {self._db.shown} is unreachable: {first}") \
                from None

    @contextmanager
    def hold(self, collection: str) -> Iterator[None]:
        conn = self._connect()
        try:
            key = int(conn.execute(_KEY_SQL, (collection,)).fetchone()[0])
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
            if not got:
                holder = self._holder(conn, key)
                raise BusyError(f"collection {collection!r} is already being synced "
                                f"({holder}); this run did nothing")
            try:
                yield
            finally:
                # Closing the connection below releases it too; unlocking first keeps the
                # release explicit when the connection is still healthy.
                # A dead connection: the server has dropped the lock already.
                with contextlib.suppress(Exception):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            conn.close()

    @staticmethod
    def _holder(conn: Any, key: int) -> str:
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        row = conn.execute(_HOLDER_SQL, (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone()
        if row is None:  # released between the two queries, or not visible to this role
            return "another process"
        pid, address, app, since = row
        where = f" from {address}" if address else " over a local socket"
        since_text = since.isoformat(timespec="seconds") if since is not None else "?"
        return f"PostgreSQL backend pid {pid}{where}, {app or 'unnamed client'}, " \
               f"connected since {since_text}"
