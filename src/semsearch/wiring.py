"""Settings -> concrete backends. The only module that imports adapters, chosen through
registries so an unknown name fails with the list of known ones."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from semsearch.config import Settings
from semsearch.errors import IdentityMismatchError, InputError
from semsearch.ports import (
    CollectionInfo,
    Embedder,
    EmbeddingCache,
    KeywordIndex,
    Store,
    SyncSource,
    VectorIndex,
)
from semsearch.services.embedding import CachedEmbedder
from semsearch.services.indexes import CollectionIndexes
from semsearch.services.sync_config import SourceSpec


def _local_embedder(settings: Settings) -> Embedder:
    from semsearch.adapters.embedders.onnx_local import LOCAL_MODELS, LocalOnnxEmbedder

    if settings.embedder_model and settings.embedder_model not in LOCAL_MODELS:
        raise InputError(f"unknown local model {settings.embedder_model!r}; the local "
                         f"embedder ships {', '.join(sorted(LOCAL_MODELS))}")

    # The embedder truncates at the smaller of the model's window and the chunk size.
    return LocalOnnxEmbedder(settings.models_dir, precision=settings.embedder_precision,
                             threads=settings.embedder_threads,
                             batch_size=settings.embed_batch_size,
                             max_tokens=settings.chunk_max_tokens,
                             model=settings.embedder_model)


def _openai_embedder(settings: Settings) -> Embedder:
    if not settings.embedder_base_url or not settings.embedder_model:
        raise InputError("the openai-compatible embedder needs SEMSEARCH_EMBEDDER_BASE_URL "
                         "(e.g. https://api.openai.com/v1) and SEMSEARCH_EMBEDDER_MODEL")
    from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
    from semsearch.adapters.embedders.openai_compat import OpenAICompatibleEmbedder

    # Chunk sizes and token estimates use the local WordPiece tokenizer: API tokenizers are
    # not available offline, and chunking only needs a consistent measure of length.
    tokenizer = LocalOnnxEmbedder(settings.models_dir).tokenizer
    optional: dict[str, Any] = {}
    if settings.embedder_max_input_tokens:
        optional["max_input_tokens"] = settings.embedder_max_input_tokens
    return OpenAICompatibleEmbedder(
        base_url=settings.embedder_base_url, model=settings.embedder_model,
        api_key=settings.api_key(), api_key_header=settings.embedder_api_key_header,
        tokenizer=tokenizer, dimensions=settings.embedder_dimensions,
        revision=settings.embedder_revision or None, truncate=settings.embedder_truncate,
        concurrency=settings.embedder_concurrency, timeout=settings.embedder_timeout,
        max_retries=settings.embedder_max_retries, **optional)


def _st_embedder(settings: Settings) -> Embedder:
    from semsearch.adapters.embedders.sentence_transformers import (
        SentenceTransformersEmbedder,
    )

    if not settings.embedder_model:
        raise InputError("the sentence-transformers embedder needs SEMSEARCH_EMBEDDER_MODEL "
                         "(a local model folder)")
    return SentenceTransformersEmbedder(
        Path(settings.embedder_model), revision=settings.embedder_revision or None,
        batch_size=settings.embed_batch_size, threads=settings.embedder_threads)


def _fake_embedder(settings: Settings) -> Embedder:
    from semsearch.adapters.embedders.fake import FakeEmbedder

    return FakeEmbedder(dimension=settings.embedder_dimensions or 384,
                        max_tokens=settings.chunk_max_tokens)


EMBEDDERS: dict[str, Callable[[Settings], Embedder]] = {
    "local": _local_embedder,
    "fake": _fake_embedder,
    "openai-compatible": _openai_embedder,
    "sentence-transformers": _st_embedder,
}


def _sqlite_cache(settings: Settings, location: str) -> EmbeddingCache:
    from semsearch.adapters.caches.sqlite import SqliteEmbeddingCache

    return SqliteEmbeddingCache(Path(location) if location else settings.home / "cache.db")


def _null_cache(settings: Settings, location: str) -> EmbeddingCache:
    from semsearch.adapters.caches.sqlite import NullEmbeddingCache

    return NullEmbeddingCache()


def _redis_cache(settings: Settings, location: str) -> EmbeddingCache:
    from semsearch.adapters.caches.redis_cache import RedisEmbeddingCache

    return RedisEmbeddingCache(f"redis://{location}", namespace=settings.cache_namespace,
                               ttl_seconds=settings.cache_ttl_seconds or None)


CACHES: dict[str, Callable[[Settings, str], EmbeddingCache]] = {
    "sqlite": _sqlite_cache, "redis": _redis_cache, "none": _null_cache}


# Settings that choose the embedder: when any is given, collections stamped with another
# identity are refused instead of served with the model they were built with.
EXPLICIT_EMBEDDER_FIELDS = frozenset({"embedder", "embedder_model", "embedder_precision",
                                      "embedder_base_url", "embedder_dimensions",
                                      "embedder_revision"})


def settings_for_model(settings: Settings, model: str) -> Settings:
    """The settings with the embedder switched to ``model``: a local model's name, else an
    API model on the configured OpenAI-compatible endpoint."""
    from semsearch.adapters.embedders.onnx_local import LOCAL_MODELS

    if model in LOCAL_MODELS:
        return settings.model_copy(update={"embedder": "local", "embedder_model": model})
    if settings.embedder == "local":
        raise InputError(f"unknown local model {model!r}; the local embedder ships "
                         f"{', '.join(sorted(LOCAL_MODELS))} (semsearch models)")
    return settings.model_copy(update={"embedder_model": model})


def _local_for_identity(settings: Settings, identity: Any) -> Embedder | None:
    """A local embedder producing exactly ``identity``, or None if this install has none."""
    from semsearch.adapters.embedders.onnx_local import LOCAL_MODELS

    if identity.model not in LOCAL_MODELS:
        return None
    precision = identity.revision.rsplit("/", 1)[-1]
    try:
        candidate = make_embedder(settings.model_copy(update={
            "embedder": "local", "embedder_model": identity.model,
            "embedder_precision": precision, "chunk_max_tokens": identity.max_tokens}))
    except InputError:
        return None
    return candidate if candidate.identity == identity else None


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
        raise InputError(f"unknown cache URL {url!r}; use sqlite:///path, "
                         "redis://host:port/db or none") from None
    if scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db
        rest = rest[1:] if rest.startswith("/") else rest
    cache = factory(settings, rest)
    if scheme != "none" and settings.cache_lru_size > 0:
        from semsearch.adapters.caches.lru import LruEmbeddingCache

        cache = LruEmbeddingCache(cache, max_items=settings.cache_lru_size)
    return cache


@dataclass
class Engine:
    """What a process holds open: the store, the cache, the embedder (model loaded on first
    use) and the derived indexes of the collections it touched."""

    settings: Settings
    store: Store
    embedder: CachedEmbedder
    _indexes: dict[str, CollectionIndexes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _executor: ThreadPoolExecutor | None = None
    _embedders: dict[str, CachedEmbedder] = field(default_factory=dict)

    def executor(self) -> ThreadPoolExecutor:
        """A small pool for overlapping the halves of a hybrid query; made on first use."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=4,
                                                    thread_name_prefix="semsearch")
            return self._executor

    def resolve(self, name: str) -> str:
        """A collection name as the user gives it -> the version it means now. ``x@v1`` is
        the collection first created as ``x`` (later versions are ``x@v2``, ...)."""
        if name.endswith("@v1"):
            return name[:-3]
        return self.store.resolve(name)

    def adopt_embedder(self, embedder: CachedEmbedder) -> None:
        """Serve collections stamped with this embedder's identity (a re-index's target)."""
        with self._lock:
            self._embedders[embedder.embedder.identity.key()] = embedder

    def embedder_for(self, info: CollectionInfo) -> CachedEmbedder:
        """The embedder of a collection's stamped identity. The configured one if it
        matches; otherwise, unless the embedder was configured explicitly, the local model
        the collection was built with (so a swap to a version built with another local
        model serves at once). An explicit configuration that disagrees, or a remote model
        that is not configured, fails and names both."""
        mine = self.embedder.embedder.identity
        if info.identity == mine:
            return self.embedder
        with self._lock:
            adopted = self._embedders.get(info.identity.key())
        if adopted is not None and adopted.embedder.identity == info.identity:
            return adopted
        explicit = self.settings.model_fields_set & EXPLICIT_EMBEDDER_FIELDS
        if explicit or info.identity.provider != "local":
            self._mismatch(info, mine)
        built = _local_for_identity(self.settings, info.identity)
        if built is None:
            self._mismatch(info, mine)
        cached = CachedEmbedder(built, self.embedder.cache, price_per_mtok=0.0)
        self.adopt_embedder(cached)
        return cached

    def _mismatch(self, info: CollectionInfo, mine: Any) -> NoReturn:
        raise IdentityMismatchError(
            f"collection {info.name!r} was built with {info.identity.key()} but the "
            f"configured embedder is {mine.key()}; configure the collection's embedder, or "
            f"re-index the collection with this one: semsearch reindex -c "
            f"{info.name.split('@')[0]} --model {mine.model}")

    def check_identity(self, info: CollectionInfo) -> None:
        self.embedder_for(info)

    def indexes(self, name: str) -> CollectionIndexes:
        with self._lock:
            if name not in self._indexes:
                info = self.store.get_collection(name)
                base = self.settings.index_dir(name)
                base.mkdir(parents=True, exist_ok=True)

                def opener() -> tuple[VectorIndex, KeywordIndex]:
                    from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex
                    from semsearch.adapters.vectors.local import LocalVectorIndex

                    return (LocalVectorIndex(base / "vectors", dimension=info.identity.dimension,
                                             ann_threshold=self.settings.ann_threshold,
                                             ef_search=self.settings.hnsw_ef_search),
                            Fts5KeywordIndex(base / "keyword.db"))

                vectors, keyword = opener()
                self._indexes[name] = CollectionIndexes(
                    name=name, vectors=vectors, keyword=keyword, opener=opener,
                    lock_path=base / ".lock")
            return self._indexes[name]

    def fresh_indexes(self, name: str) -> CollectionIndexes:
        """Indexes that reflect the store's current state, caught up first if they do not
        (another process wrote, files were deleted, a crash left them behind)."""
        info = self.store.get_collection(name)
        idx = self.indexes(name)
        if not idx.is_fresh(info.generation):
            self.check_identity(info)
            with idx.rw.write():
                info = self.store.get_collection(name)
                if not idx.is_fresh(info.generation):
                    idx.refresh(self.store, self.embedder_for(info), info.generation)
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
                  embedder=CachedEmbedder(make_embedder(settings), make_cache(settings),
                                          price_per_mtok=settings.embedder_price_per_mtok))


def make_source(spec: SourceSpec, settings: Settings) -> SyncSource:
    """A ``SourceSpec`` -> SyncSource: a database URL or a path."""
    if spec.is_sql:
        from semsearch.adapters.sources.sql import SqlSource

        return SqlSource(spec, max_text_chars=settings.max_text_chars)
    from semsearch.adapters.sources.file_sync import FileSource

    return FileSource(Path(spec.source))
