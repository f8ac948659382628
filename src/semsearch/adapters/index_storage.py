"""The embedded backend's derived indexes: one folder per collection version under
``<home>/indexes/<name>``, holding the dense index (float32 rows, an int8 usearch graph,
a change log) and the BM25 index (an SQLite FTS5 file), with a ``.lock`` file that
serializes savers and rebuilders of several processes (``serve --workers N``, a CLI
beside a server)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex
from semsearch.adapters.locks import flock
from semsearch.adapters.vectors.local import LocalVectorIndex
from semsearch.ports import KeywordIndex, VectorIndex


class LocalIndexStorage:
    shared = False  # each process holds its own copy in memory; files saved at run end

    def __init__(self, root: Path, *, ann_threshold: int = 20000, ef_search: int = 256) -> None:
        self._root = root
        self._ann_threshold = ann_threshold
        self._ef_search = ef_search

    def _dir(self, collection: str) -> Path:
        return self._root / collection

    def open(self, collection: str, dimension: int) -> tuple[VectorIndex, KeywordIndex]:
        base = self._dir(collection)
        base.mkdir(parents=True, exist_ok=True)
        return (LocalVectorIndex(base / "vectors", dimension=dimension,
                                 ann_threshold=self._ann_threshold,
                                 ef_search=self._ef_search),
                self.open_keyword(collection))

    def open_keyword(self, collection: str) -> KeywordIndex:
        """The keyword half alone: for a storage that keeps the vectors elsewhere."""
        base = self._dir(collection)
        base.mkdir(parents=True, exist_ok=True)
        return Fts5KeywordIndex(base / "keyword.db")

    @contextmanager
    def lock(self, collection: str) -> Iterator[None]:
        with flock(self._dir(collection) / ".lock"):
            yield

    def exists(self, collection: str) -> bool:
        return self._dir(collection).exists()

    def disk_bytes(self, collection: str) -> int:
        path = self._dir(collection)
        if not path.exists():
            return 0
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    def remove(self, collection: str) -> None:
        shutil.rmtree(self._dir(collection), ignore_errors=True)

    def point(self, alias: str, collection: str) -> None:
        """Files have no names of their own to move: the store's alias is the only one."""

    def unpoint(self, alias: str) -> None:
        """Nothing to forget: see ``point``."""

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing held open beyond the indexes, which the engine closes."""
