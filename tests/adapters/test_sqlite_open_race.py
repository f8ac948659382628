"""Processes that open one new SQLite file at the same moment (two consumers or workers
starting together on one home) all get it: SQLite refuses the WAL switch and schema of all
but one at once with "database is locked" instead of waiting, and opening tries again."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from semsearch.adapters.caches.sqlite import SqliteEmbeddingCache
from semsearch.adapters.stores.sqlite_store import SqliteDocumentStore


def _open(kind: str, path: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        if kind == "cache":
            SqliteEmbeddingCache(Path(path)).close()
        else:
            SqliteDocumentStore(Path(path)).close()
    except Exception as exc:  # reported to the test
        errors.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("kind", ["cache", "store"])
def test_six_processes_open_one_new_file_at_once(tmp_path: Path, kind: str) -> None:
    ctx = mp.get_context("fork")
    failures: list[str] = []
    for trial in range(8):  # the race is lost in a few of every 20 tries without the retry
        path = tmp_path / f"{kind}-{trial}.db"
        barrier, errors = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(kind, str(path), barrier, errors))
                 for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        while not errors.empty():
            failures.append(errors.get())
    assert failures == []
