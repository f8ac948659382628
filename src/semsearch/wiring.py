"""Settings -> concrete backends. The only module that imports adapters, chosen through
registries so an unknown name fails with the list of known ones."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from semsearch.config import Settings
from semsearch.errors import IdentityMismatchError, InputError
from semsearch.ports import CollectionInfo, DocumentStore, Embedder, EmbeddingCache
from semsearch.services.embedding import CachedEmbedder
from semsearch.services.indexes import CollectionIndexes


def _local_embedder(settings: Settings) -> Embedder:
    from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder

    return LocalOnnxEmbedder(settings.models_dir, precision=settings.embedder_precision,
                             threads=settings.embedder_threads,
                             batch_size=settings.embed_batch_size,
                             max_tokens=settings.chunk_max_tokens)


EMBEDDERS: dict[str, Callable[[Settings], Embedder]] = {"local": _local_embedder}


def _sqlite_cache(settings: Settings, location: str) -> EmbeddingCache:
    from semsearch.adapters.caches.sqlite import SqliteEmbeddingCache

    return SqliteEmbeddingCache(Path(location) if location else settings.home / "cache.db")


def _null_cache(settings: Settings, location: str) -> EmbeddingCache:
    from semsearch.adapters.caches.sqlite import NullEmbeddingCache

    return NullEmbeddingCache()


CACHES: dict[str, Callable[[Settings, str], EmbeddingCache]] = {
    "sqlite": _sqlite_cache, "none": _null_cache}


def make_embedder(settings: Settings) -> Embedder:
    try:
        factory = EMBEDDERS[settings.embedder]
    except KeyError:
        raise InputError(f"unknown embedder {settings.embedder!r}; known: "
                         f"{', '.join(sorted(EMBEDDERS))}") from None
    return factory(settings)


def make_cache(settings: Settings) -> EmbeddingCache:
    url = settings.cache_url.strip()
    scheme, _, rest = (url or "sqlite://").partition("://")
    if url == "none":
        scheme, rest = "none", ""
    try:
        factory = CACHES[scheme]
    except KeyError:
        raise InputError(f"unknown cache URL {url!r}; use one of: sqlite:///path, none") from None
    # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db
    return factory(settings, rest[1:] if rest.startswith("/") else rest)


@dataclass
class Engine:
    """What a process holds open: the store, the cache, the embedder (model loaded on first
    use) and the derived indexes of the collections it touched."""

    settings: Settings
    store: DocumentStore
    embedder: CachedEmbedder
    _indexes: dict[str, CollectionIndexes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _executor: ThreadPoolExecutor | None = None

    def executor(self) -> ThreadPoolExecutor:
        """A small pool for overlapping the halves of a hybrid query; made on first use."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=4,
                                                    thread_name_prefix="semsearch")
            return self._executor

    def check_identity(self, info: CollectionInfo) -> None:
        mine = self.embedder.embedder.identity
        if info.identity != mine:
            raise IdentityMismatchError(
                f"collection {info.name!r} was built with {info.identity.key()} but the "
                f"configured embedder is {mine.key()}; configure the collection's embedder "
                "or re-index the collection into a new name with this one")

    def indexes(self, name: str) -> CollectionIndexes:
        with self._lock:
            if name not in self._indexes:
                from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex
                from semsearch.adapters.vectors.local import LocalVectorIndex

                info = self.store.get_collection(name)
                base = self.settings.index_dir(name)
                base.mkdir(parents=True, exist_ok=True)
                self._indexes[name] = CollectionIndexes(
                    name=name,
                    vectors=LocalVectorIndex(base / "vectors", dimension=info.identity.dimension,
                                             ann_threshold=self.settings.ann_threshold,
                                             ef_search=self.settings.hnsw_ef_search),
                    keyword=Fts5KeywordIndex(base / "keyword.db"))
            return self._indexes[name]

    def fresh_indexes(self, name: str) -> CollectionIndexes:
        """Indexes that reflect the store's current state, rebuilt first if they do not."""
        info = self.store.get_collection(name)
        idx = self.indexes(name)
        if not idx.is_fresh(info.generation):
            self.check_identity(info)
            idx.rebuild(self.store, self.embedder, info.generation)
        return idx

    def has_indexes(self, name: str) -> bool:
        with self._lock:
            return name in self._indexes

    def forget_indexes(self, name: str) -> None:
        with self._lock:
            idx = self._indexes.pop(name, None)
        if idx is not None:
            idx.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for name in list(self._indexes):
            self.forget_indexes(name)
        self.embedder.cache.close()
        self.store.close()


def open_engine(settings: Settings | None = None) -> Engine:
    from semsearch.adapters.stores.sqlite_store import SqliteDocumentStore

    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    store = SqliteDocumentStore(settings.store_path)
    return Engine(settings=settings, store=store,
                  embedder=CachedEmbedder(make_embedder(settings), make_cache(settings)))
