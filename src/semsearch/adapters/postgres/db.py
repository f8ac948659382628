"""One connection pool per process for every PostgreSQL adapter, with the habits a shared
database needs: a bounded pool, a statement timeout on every connection, retries of
serialization failures and dropped connections, and errors that say what is wrong (the
server is down, pgvector is missing) instead of a driver traceback."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from semsearch.errors import BackendError

log = logging.getLogger("semsearch.postgres")
T = TypeVar("T")

# Serialization failure, deadlock, the "connection exception" class, and the server going
# away under us (admin shutdown, crash shutdown, cannot connect now: a restart or failover).
_RETRY_SQLSTATES = {"40001", "40P01"}
_RETRY_CLASSES = ("08", "57P01", "57P02", "57P03")


def mask(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    import re

    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class Database:
    """``url`` is a libpq URL (``postgresql://user@host:5432/db``, ``?host=/socket/dir``).
    The pool opens lazily; ``check()`` connects at once and fails with a clear message."""

    def __init__(self, url: str, *, pool_size: int = 10, statement_timeout_ms: int = 30000,
                 connect_timeout: float = 10.0, retries: int = 3,
                 application_name: str = "semsearch") -> None:
        from psycopg_pool import ConnectionPool

        self.url = url
        self.shown = mask(url)
        self._retries = retries
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, int(connect_timeout)),
            "application_name": application_name,
            "options": f"-c statement_timeout={int(statement_timeout_ms)}",
        }
        self._pool = ConnectionPool(url, min_size=1, max_size=max(1, pool_size),
                                    kwargs=kwargs, open=False, configure=self._configure,
                                    timeout=connect_timeout)
        self._opened = False
        self._connect_timeout = connect_timeout

    @staticmethod
    def _configure(conn: Any) -> None:
        try:
            from pgvector.psycopg import register_vector

            register_vector(conn)
        except Exception:
            pass

    def _open(self) -> None:
        if not self._opened:
            import psycopg

            try:
                # One direct connection first: a down server or a refused login fails at
                # once with libpq's reason, where the pool would retry until its timeout
                # and then only say it timed out.
                psycopg.connect(self.url, connect_timeout=max(1, int(self._connect_timeout)),
                                application_name="semsearch").close()
                self._pool.open(wait=True, timeout=self._connect_timeout)
            except Exception as exc:
                raise BackendError(f"cannot connect to PostgreSQL at {self.shown}: "
                                   f"{_first_line(exc)}") from None
            self._opened = True

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection in autocommit mode."""
        self._open()
        try:
            with self._pool.connection() as conn:
                yield conn
        except BackendError:
            raise
        except Exception as exc:
            if _is_connection_error(exc):
                raise BackendError(f"PostgreSQL at {self.shown} is unreachable: "
                                   f"{_first_line(exc)}") from None
            raise

    def run(self, fn: Callable[[Any], T], *, what: str = "a query") -> T:
        """``fn(conn)`` inside one transaction, retried on serialization failures, deadlocks
        and dropped connections (with jittered backoff); other errors pass through."""
        delay = 0.05
        for attempt in range(self._retries + 1):
            try:
                with self.connection() as conn, conn.transaction():
                    return fn(conn)
            except Exception as exc:
                if attempt < self._retries and _retryable(exc):
                    log.warning("PostgreSQL %s during %s; retrying", _first_line(exc), what)
                    time.sleep(random.uniform(0, delay))
                    delay = min(delay * 2, 2.0)
                    continue
                raise
        raise AssertionError("unreachable")

    def check(self, *, need_vector: bool = True) -> None:
        """Connect now; with ``need_vector`` also require the pgvector extension to be
        installable. Raises BackendError naming what is missing."""
        with self.connection() as conn:
            conn.execute("SELECT 1")
            if need_vector:
                row = conn.execute("SELECT 1 FROM pg_available_extensions "
                                   "WHERE name = 'vector'").fetchone()
                if row is None:
                    raise BackendError(
                        f"PostgreSQL at {self.shown} has no pgvector extension; install "
                        "pgvector on the server (e.g. the postgresql-NN-pgvector package, "
                        "or a managed database that offers it)")

    def close(self) -> None:
        if self._opened:
            self._pool.close()
            self._opened = False


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


def _is_connection_error(exc: BaseException) -> bool:
    import psycopg
    from psycopg_pool import PoolTimeout

    return isinstance(exc, psycopg.OperationalError | PoolTimeout) and (
        not _sqlstate(exc) or _sqlstate(exc).startswith(_RETRY_CLASSES))


def _retryable(exc: BaseException) -> bool:
    state = _sqlstate(exc)
    return state in _RETRY_SQLSTATES or state.startswith(_RETRY_CLASSES) or \
        _is_connection_error(exc)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
