"""Derived indexes with the vectors in Milvus: each collection version's vectors in a Milvus
collection of its own, its keyword index where the canonical store keeps it (an FTS5 file
beside SQLite, or BM25 tables in PostgreSQL), and the store's own lock serializing the
writers and rebuilders of a collection.

Milvus holds one durable copy for every process, so the indexes are ``shared``: every batch
is written through and stamped (the keyword half commits per batch too), and another
process sees it at once. The semsearch name of a collection is mirrored as a Milvus alias
(``<prefix><name>``) on the version it serves, moved by swap, rollback and activate, so
tools that read Milvus directly follow the same version semsearch serves."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any, Protocol

from semsearch.adapters.milvus.client import Milvus, aliases_of, milvus_name, pymilvus
from semsearch.adapters.milvus.vectors import MilvusVectorIndex
from semsearch.ports import KeywordIndex, VectorIndex

log = logging.getLogger("semsearch.milvus")


class KeywordStorage(Protocol):
    """What this storage needs of the store's own index storage (Local or Pg)."""

    def open_keyword(self, collection: str) -> KeywordIndex: ...

    def lock(self, collection: str) -> AbstractContextManager[None]: ...

    def exists(self, collection: str) -> bool: ...

    def disk_bytes(self, collection: str) -> int: ...

    def remove(self, collection: str) -> None: ...


def _utility() -> Any:
    return pymilvus().utility


class MilvusIndexStorage:
    shared = True

    def __init__(self, milvus: Milvus, keyword: KeywordStorage, *,
                 ef_search: int = 256) -> None:
        self.milvus = milvus
        self._keyword = keyword
        self._ef_search = ef_search

    def alias_name(self, name: str) -> str:
        return milvus_name(self.milvus.prefix, name, exact=True)

    def open(self, collection: str, dimension: int) -> tuple[VectorIndex, KeywordIndex]:
        # A base version (``docs``) is born serving its name: its Milvus alias comes with it.
        alias = None if "@" in collection else self.alias_name(collection)
        vectors = MilvusVectorIndex(self.milvus, collection, dimension,
                                    ef_search=self._ef_search, alias=alias)
        return vectors, self._keyword.open_keyword(collection)

    def lock(self, collection: str) -> AbstractContextManager[None]:
        return self._keyword.lock(collection)

    def exists(self, collection: str) -> bool:
        name = milvus_name(self.milvus.prefix, collection)
        return self._keyword.exists(collection) or bool(self.milvus.call(
            "looking up a collection", lambda a: _utility().has_collection(
                name, using=a, timeout=self.milvus.timeout)))

    def disk_bytes(self, collection: str) -> int:
        """The keyword index's bytes; Milvus reports no sizes through its API."""
        return self._keyword.disk_bytes(collection)

    def remove(self, collection: str) -> None:
        """Drop the version's Milvus collection (with any alias on it) and its keyword
        index."""
        name = milvus_name(self.milvus.prefix, collection)
        timeout = self.milvus.timeout

        def drop(using: str) -> None:
            utility = _utility()
            if not utility.has_collection(name, using=using, timeout=timeout):
                return
            for alias in aliases_of(name, using, timeout):
                utility.drop_alias(alias, using=using, timeout=timeout)
            utility.drop_collection(name, using=using, timeout=timeout)

        self.milvus.call(f"dropping collection {name}", drop)
        self._keyword.remove(collection)

    def point(self, alias: str, collection: str) -> None:
        """Make the Milvus alias of ``alias`` name ``collection``'s Milvus collection."""
        target = milvus_name(self.milvus.prefix, collection)
        name = self.alias_name(alias)
        timeout = self.milvus.timeout

        def move(using: str) -> None:
            utility = _utility()
            if not utility.has_collection(target, using=using, timeout=timeout):
                return  # made with the alias when the version's first vectors are written
            if name in aliases_of(target, using, timeout):
                return
            try:
                utility.alter_alias(target, name, using=using, timeout=timeout)
            except Exception:  # not an alias yet: create it
                utility.create_alias(target, name, using=using, timeout=timeout)

        self.milvus.call(f"moving alias {name} to {target}", move)

    def unpoint(self, alias: str) -> None:
        name = self.alias_name(alias)

        def drop(using: str) -> None:
            try:
                _utility().drop_alias(name, using=using, timeout=self.milvus.timeout)
            except Exception:  # no such alias: nothing to drop
                log.debug("no Milvus alias %s to drop", name)

        self.milvus.call(f"dropping alias {name}", drop)

    def ping(self) -> bool:
        return self.milvus.ping()

    def close(self) -> None:
        self.milvus.close()
