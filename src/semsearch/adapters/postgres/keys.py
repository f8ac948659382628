"""API keys in the shared database: a key created by ``semsearch keys create`` on any
machine is accepted by every server on the database, and a revoked one refused, without a
restart.

``version`` is one small aggregate over the (tiny) table, remembered for a second so a busy
server asks at most once a second, not once per request: a change reaches every server
within a second."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from semsearch.adapters.postgres.db import Database
from semsearch.errors import BackendError

TABLE = "semsearch_api_keys"

# The migrations create this table too; creating it here (idempotently) lets the keys work
# against a database that has not been migrated yet.
_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    name text PRIMARY KEY,
    sha256 text NOT NULL,
    scopes jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""

# Any insert, replacement or deletion changes at least one of these.
_VERSION_SQL = f"""
SELECT count(*), max(created_at),
       coalesce(sum(hashtextextended(name || ':' || sha256 || ':' || scopes::text, 0)
                    ::numeric), 0)
FROM {TABLE}"""


class PgKeyStorage:
    """``KeyStorage`` over the ``semsearch_api_keys`` table."""

    local = False  # version() may wait on the database

    def __init__(self, db: Database, *, version_ttl: float = 1.0, owns_db: bool = False) -> None:
        self._db = db
        self._owns_db = owns_db
        self._ttl = version_ttl
        self._ready = False
        self._lock = threading.Lock()
        self._version: tuple[float, object] | None = None

    @property
    def where(self) -> str:
        return f"table {TABLE} at {self._db.shown}"

    def _ensure(self) -> None:
        if not self._ready:
            self._db.run(lambda conn: conn.execute(_DDL), what="creating the API keys table")
            self._ready = True

    def version(self) -> object:
        now = time.monotonic()
        with self._lock:
            if self._version is not None and now - self._version[0] < self._ttl:
                return self._version[1]
        try:
            self._ensure()
            row = self._db.run(lambda conn: conn.execute(_VERSION_SQL).fetchone(),
                               what="checking the API keys")
        except Exception as exc:
            with self._lock:  # an outage: ask again in a second, not on every request
                if self._version is not None:
                    self._version = (now, self._version[1])
            raise _unreachable(self._db, exc) from None
        value = tuple(row)
        with self._lock:
            self._version = (now, value)
        return value

    def load(self) -> list[dict[str, Any]]:
        try:
            self._ensure()
            rows = self._db.run(lambda conn: conn.execute(
                f"SELECT name, sha256, scopes FROM {TABLE} ORDER BY created_at, name"
            ).fetchall(), what="reading the API keys")
        except Exception as exc:
            raise _unreachable(self._db, exc) from None
        return [{"name": n, "sha256": h, "scopes": s if isinstance(s, dict) else json.loads(s)}
                for n, h, s in rows]

    def upsert(self, entry: Mapping[str, Any]) -> None:
        self._ensure()
        self._db.run(lambda conn: conn.execute(
            f"INSERT INTO {TABLE} (name, sha256, scopes) VALUES (%s, %s, %s::jsonb) "
            "ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, "
            "scopes = EXCLUDED.scopes, created_at = now()",
            (entry["name"], entry["sha256"], json.dumps(dict(entry["scopes"])))),
            what="saving an API key")
        self._forget_version()

    def delete(self, name: str) -> bool:
        self._ensure()
        count = self._db.run(lambda conn: conn.execute(
            f"DELETE FROM {TABLE} WHERE name = %s", (name,)).rowcount,
            what="revoking an API key")
        self._forget_version()
        return bool(count)

    def _forget_version(self) -> None:
        with self._lock:
            self._version = None

    def close(self) -> None:
        if self._owns_db:
            self._db.close()


def _unreachable(db: Database, exc: Exception) -> BackendError:
    """Any failure to read the keys (the server shutting down, a dropped connection) as one
    clear error, which the key store answers by keeping the keys it has."""
    if isinstance(exc, BackendError):
        return exc
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return BackendError(f"the API keys at {db.shown} cannot be read: {first}")
