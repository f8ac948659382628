"""Locks made of ``flock`` on files under the home: one helper for every cross-process lock
of the embedded backend. The kernel drops a lock with its process, so a run killed with
kill -9 never leaves one behind."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from semsearch.errors import BusyError


@contextmanager
def flock(path: Path, *, wait: bool = True) -> Iterator[object]:
    """Hold an exclusive lock on ``path`` (created if missing). ``wait=False`` raises
    BlockingIOError at once when another process holds it. Yields the open file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class FileLocks:
    """``CollectionLocks`` over ``<root>/<collection>.lock``. The holder writes its pid and
    start time into the file, so a refused run can say who holds the collection."""

    def __init__(self, root: Path) -> None:
        self._root = root

    @contextmanager
    def hold(self, collection: str) -> Iterator[None]:
        try:
            with flock(self._root / f"{collection}.lock", wait=False) as fh:
                fh.seek(0)  # type: ignore[attr-defined]
                fh.truncate()  # type: ignore[attr-defined]
                fh.write(f"pid {os.getpid()} since "  # type: ignore[attr-defined]
                         f"{datetime.now(UTC).isoformat(timespec='seconds')}")
                fh.flush()  # type: ignore[attr-defined]
                try:
                    yield
                finally:
                    fh.seek(0)  # type: ignore[attr-defined]
                    fh.truncate()  # type: ignore[attr-defined]
        except BlockingIOError:
            holder = (self._root / f"{collection}.lock").read_text().strip() or \
                "another process"
            raise BusyError(f"collection {collection!r} is already being synced ({holder}); "
                            "this run did nothing") from None
