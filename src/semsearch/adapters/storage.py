"""Files on a disk that may fill up: one wording for write errors, and SQLite opens that
still read when nothing can be written.

A SQLite file in WAL mode needs its ``-shm`` index (32 KiB) before it can answer a single
read, and on a full disk that file cannot grow: every open fails with "disk I/O error"
(``SQLITE_IOERR_SHMSIZE``) although the data is intact. :func:`open_sqlite` then falls back
to a read-only connection: ``mode=ro`` works when another process keeps the ``-shm`` alive
(it may hold WAL frames that must be read); ``immutable=1`` skips the ``-shm`` entirely and
is taken only when the ``-wal`` is absent or empty, i.e. when the main file alone holds every
committed transaction. Writers on such a connection get :class:`StorageFullError` naming the
file and the cause; callers retry the normal open before each write, so freeing space is
enough to write again."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from semsearch.core.backoff import backoff_delay
from semsearch.errors import BackendError, StorageFullError

log = logging.getLogger("semsearch.storage")

HINT = "free some space on that disk (or move SEMSEARCH_HOME) and retry"
# An I/O error with less room than this left is taken for a full disk: SQLite reports a
# ``-shm`` that cannot grow as a generic I/O error, not as SQLITE_FULL.
_NEARLY_FULL_BYTES = 1 << 20
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int | None:
    """Bytes this process may still write on the filesystem holding ``path`` (root may use
    the blocks reserved for it), or None when that cannot be told."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF  # primary code of an extended one


def storage_cause(exc: BaseException, path: Path) -> str | None:
    """What to tell a user when ``exc`` means the disk holding ``path`` is full, else None."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return exc.strerror or os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.errno in (None, errno.EIO):
        # numpy reports a short write as OSError("4992 requested and 2016 written")
        free = free_bytes(path)
        if free is not None and free < _NEARLY_FULL_BYTES:
            return f"No space left on device ({exc})"
    if isinstance(exc, sqlite3.Error):
        code = _sqlite_code(exc)
        if code == sqlite3.SQLITE_FULL or (code is None and "is full" in str(exc)):
            return str(exc)
        if code == sqlite3.SQLITE_IOERR:
            free = free_bytes(path)
            if free is not None and free < _NEARLY_FULL_BYTES:
                return f"the disk is full ({exc})"
    return None


def write_error(what: str, path: Path, exc: BaseException, verb: str = "write") -> BackendError:
    """``cannot write the keyword index /x/keyword.db: database or disk is full; ...``:
    a :class:`StorageFullError` when the disk is full, else a :class:`BackendError`."""
    cause = storage_cause(exc, path)
    if cause is not None:
        return StorageFullError(f"cannot {verb} {what} {path}: {cause}; {HINT}")
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return BackendError(f"cannot {verb} {what} {path}: {detail}")


def _probe(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()


def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
    # Autocommit (transactions are explicit) and shared across threads (callers lock).
    return sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)


def _read_only(path: Path) -> sqlite3.Connection | None:
    """A read-only connection that reads every committed transaction, or None."""
    uris = [f"{path.resolve().as_uri()}?mode=ro"]
    wal = Path(f"{path}-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        uris.append(f"{path.resolve().as_uri()}?mode=ro&immutable=1")
    for uri in uris:
        try:
            conn = _connect(uri, uri=True)
        except sqlite3.Error:
            continue
        try:
            _probe(conn)
        except sqlite3.Error:
            conn.close()
            continue
        return conn
    return None


def _set_up(conn: sqlite3.Connection, setup: Callable[[sqlite3.Connection], None],
            wait: float = 15.0) -> None:
    """``setup`` (pragmas, schema), tried again while another process holds the file: two
    processes opening a new database at once both switch it to WAL and create its tables,
    and SQLite answers "database is locked" at once there instead of waiting its busy
    timeout (a lock upgrade it cannot wait for without a deadlock)."""
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        try:
            setup(conn)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            time.sleep(backoff_delay(attempt, 0.01, 0.5))
            attempt += 1


def open_sqlite(path: Path, what: str, setup: Callable[[sqlite3.Connection], None]
                ) -> tuple[sqlite3.Connection, StorageFullError | None]:
    """Open ``path`` and run ``setup`` (pragmas, schema). On a full disk, fall back to a
    read-only connection and return, beside it, the error any write would meet; None means
    the connection is a normal read-write one. Anything else raises a BackendError naming
    the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(what, path.parent, exc, "create the folder of") from exc
    existed = path.exists() and path.stat().st_size > 0
    try:
        conn = _connect(str(path))
    except sqlite3.Error as exc:
        raise write_error(what, path, exc, "open") from exc
    try:
        _set_up(conn, setup)
    except sqlite3.Error as exc:
        conn.close()
        cause = storage_cause(exc, path)
        ro = _read_only(path) if cause is not None and existed else None
        if ro is None:
            raise write_error(what, path, exc, "open") from exc
        log.info("%s %s opened read-only: %s", what, path, cause)
        return ro, StorageFullError(f"cannot write {what} {path}: {cause}; {HINT}")
    return conn, None
