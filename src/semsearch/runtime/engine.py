"""What a process holds open, and the rules for serving a collection.

``Engine`` owns the backends ``wiring`` built for it (the store, the embedding cache and
configured embedder, where derived indexes live, the collection locks, the corpus reader),
the derived indexes of the collections it has touched, and a small thread pool. It knows no
concrete backend: everything arrives through the ports. ``engine.collection(name)`` is the
one way in: it resolves the name to the version it points at now and returns a
``Collection`` handle carrying that version's info, embedder and fresh indexes."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import NoReturn

from semsearch.config import Settings
from semsearch.core.adapter import split_adapted, split_finetuned
from semsearch.core.chunking import ChunkerConfig
from semsearch.core.types import InputType
from semsearch.errors import (
    AlreadyExistsError,
    IdentityMismatchError,
    IndexMissingError,
    NotFoundError,
)
from semsearch.ports import (
    ChatModel,
    CollectionInfo,
    CollectionLocks,
    Corpora,
    EmbedderFactory,
    IndexStorage,
    KeywordIndex,
    NoTelemetry,
    Reranker,
    Store,
    Telemetry,
    VectorIndex,
)
from semsearch.runtime.batching import BatchingEmbedder
from semsearch.runtime.collection import Collection
from semsearch.runtime.embedding import CachedEmbedder
from semsearch.runtime.indexes import CollectionIndexes
from semsearch.runtime.naming import base_version, validate_name

# Settings that choose the embedder: when any is given, collections stamped with another
# identity are refused instead of served with the model they were built with.
EXPLICIT_EMBEDDER_FIELDS = frozenset({"embedder", "embedder_model", "embedder_precision",
                                      "embedder_base_url", "embedder_dimensions",
                                      "embedder_revision"})


@dataclass
class Engine:
    settings: Settings
    store: Store
    embedder: CachedEmbedder  # the configured one
    index_storage: IndexStorage
    locks: CollectionLocks
    embedders: EmbedderFactory
    corpora: Corpora
    # spans and metrics of searches and writes; exported only when wiring configures it
    telemetry: Telemetry = field(default_factory=NoTelemetry)
    llm: ChatModel | None = None  # answers `ask`; None: extractive answers
    # builds the re-ranker on first use (wiring's make_reranker); None: none configured
    reranker_factory: Callable[[], Reranker | None] | None = None
    _indexes: dict[str, CollectionIndexes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _executor: ThreadPoolExecutor | None = None
    _adopted: dict[str, CachedEmbedder] = field(default_factory=dict)
    _reranker: Reranker | None = None
    _reranker_built: bool = False
    _batcher: BatchingEmbedder | None = None

    # -- collections -------------------------------------------------------------------
    def collection(self, name: str, *, create: bool = False) -> Collection:
        """The handle of the version ``name`` points at now (``x@v1`` is the collection
        first created as ``x``). ``create`` makes a missing plain name, stamped with the
        configured embedder and chunker. Raises NotFoundError; the handle's ``embedder``
        raises IdentityMismatchError when no embedder here can serve the version."""
        if create and "@" not in name:
            validate_name(name)
        physical = self.resolve(name)
        created = False
        try:
            info = self.store.get_collection(physical)
        except NotFoundError:
            if not create or "@" in name:
                raise
            try:
                info, created = self._create(physical), True
            except AlreadyExistsError:  # another process created it a moment ago
                info = self.store.get_collection(physical)
        return Collection(engine=self, name=name, info=info, created=created)

    def _create(self, name: str) -> CollectionInfo:
        s = self.settings
        identity = self.embedder.identity
        # Chunks must fit the model's window (128 tokens for paraphrase-MiniLM-L3-v2), or
        # the model silently cuts every chunk's tail.
        size = min(s.chunk_max_tokens, identity.max_tokens)
        overlap = s.chunk_overlap_tokens if size == s.chunk_max_tokens \
            else min(s.chunk_overlap_tokens, size // 4)
        cfg = ChunkerConfig(max_tokens=size, overlap_tokens=overlap, strategy=s.chunk_strategy)
        return self.store.create_collection(name, identity, cfg.to_dict())

    def resolve(self, name: str) -> str:
        """A collection name as the user gives it -> the version it means now."""
        if name.endswith("@v1"):
            return base_version(name)
        return self.store.resolve(name)

    # -- embedders: which model serves a stamped identity ------------------------------
    def adopt_embedder(self, embedder: CachedEmbedder) -> None:
        """Serve collections stamped with this embedder's identity (a re-index's target)."""
        with self._lock:
            self._adopted[embedder.identity.key()] = embedder

    def embedder_for(self, info: CollectionInfo) -> CachedEmbedder:
        """The configured embedder if the collection's stamped identity is its own;
        otherwise, unless the embedder was configured explicitly, the local model the
        collection was built with (so a swap to a version built with another local model
        serves at once). An explicit configuration that disagrees, or a remote model that
        is not configured, fails and names both."""
        mine = self.embedder.identity
        if info.identity == mine:
            return self.embedder
        with self._lock:
            adopted = self._adopted.get(info.identity.key())
        if adopted is not None and adopted.identity == info.identity:
            return adopted
        if split_adapted(info.identity) is not None:  # a query adapter (semsearch adapt)
            return self._adapted_embedder(info)
        if split_finetuned(info.identity) is not None:  # a fine-tune (semsearch adapt)
            return self._finetuned_embedder(info)
        explicit = self.settings.model_fields_set & EXPLICIT_EMBEDDER_FIELDS
        built = None if explicit or info.identity.provider != "local" \
            else self.embedders.for_identity(info.identity)
        if built is None:
            self._mismatch(info)
        cached = CachedEmbedder(built, self.embedder.cache, price_per_mtok=0.0)
        self.adopt_embedder(cached)
        return cached

    def _adapted_embedder(self, info: CollectionInfo) -> CachedEmbedder:
        """A collection ``semsearch adapt`` stamped: its base model's embedder, chosen by
        the rules above, with the query adapter its identity names, read from the store
        (so every process and replica serving the collection finds it)."""
        from semsearch.runtime.adaptation import AdaptedCachedEmbedder, load_adapter

        split = split_adapted(info.identity)
        assert split is not None
        base = self.embedder_for(replace(info, identity=split[0]))
        cached = AdaptedCachedEmbedder(base, load_adapter(self.store, info.identity),
                                       info.identity)
        self.adopt_embedder(cached)
        return cached

    def _finetuned_embedder(self, info: CollectionInfo) -> CachedEmbedder:
        """A collection ``semsearch adapt --method finetune`` stamped: the base model must be
        servable here by the rules above; the fine-tuned weights its identity names come
        from the store (through the embedder factory), built into the local ONNX model, so
        every process and replica serves it without torch."""
        split = split_finetuned(info.identity)
        assert split is not None
        self.embedder_for(replace(info, identity=split[0]))  # refuses a disagreeing config
        built = self.embedders.for_identity(info.identity)
        if built is None:
            self._mismatch(info)
        cached = CachedEmbedder(built, self.embedder.cache, price_per_mtok=0.0)
        self.adopt_embedder(cached)
        return cached

    def _mismatch(self, info: CollectionInfo) -> NoReturn:
        mine = self.embedder.identity
        raise IdentityMismatchError(
            f"collection {info.name!r} was built with {info.identity.key()} but the "
            f"configured embedder is {mine.key()}; configure the collection's embedder, or "
            f"re-index the collection with this one: semsearch reindex -c "
            f"{info.name.split('@')[0]} --model {mine.model}")

    # -- derived indexes ---------------------------------------------------------------
    def indexes(self, info: CollectionInfo) -> CollectionIndexes:
        """The version's indexes as this process holds them (opened from storage on first
        use; possibly behind the store: see ``fresh_indexes``)."""
        with self._lock:
            idx = self._indexes.get(info.name)
            if idx is None:
                name, dim = info.name, info.identity.dimension

                def opener() -> tuple[VectorIndex, KeywordIndex]:
                    return self.index_storage.open(name, dim)

                vectors, keyword = opener()
                idx = self._indexes[name] = CollectionIndexes(
                    name=name, vectors=vectors, keyword=keyword, opener=opener,
                    shared_lock=lambda: self.index_storage.lock(name),
                    durable=self.index_storage.shared)
            return idx

    def fresh_indexes(self, info: CollectionInfo) -> CollectionIndexes:
        """Indexes that reflect the store at ``info``'s generation or later, caught up first
        if they do not (another process wrote, files were deleted, a crash left them
        behind)."""
        idx = self.indexes(info)
        if not idx.is_fresh(info.generation):
            embedder = self.embedder_for(info)
            with idx.rw.write():
                current = self.store.get_collection(info.name)
                if not idx.is_fresh(current.generation):
                    if current.chunks and idx.vectors.missing:
                        self.forget_indexes(info.name)
                        raise IndexMissingError(
                            f"the vectors of {info.name!r} are gone from the vector index "
                            f"that held them (SEMSEARCH_VECTOR_INDEX: was it wiped?); the "
                            f"store still holds its {current.chunks:,} chunks: run "
                            f"`semsearch rebuild -c {info.name}` to re-create them")
                    idx.refresh(self.store, embedder, current.generation)
        return idx

    def mirror_alias(self, name: str) -> None:
        """Point the index storage's own name for ``name`` (a Milvus alias) at the version
        the store serves under it now: after a swap, rollback, activate or rebuild."""
        if "@" not in name:
            self.index_storage.point(name, self.resolve(name))

    def has_indexes(self, name: str) -> bool:
        with self._lock:
            return name in self._indexes

    def forget_indexes(self, name: str) -> None:
        with self._lock:
            idx = self._indexes.pop(name, None)
        if idx is not None:
            idx.close()

    def drop_indexes(self, name: str) -> None:
        """Forget and delete a version's derived indexes (they can be rebuilt)."""
        self.forget_indexes(name)
        self.index_storage.remove(name)

    # -- lifecycle ---------------------------------------------------------------------
    def batch_embeddings(self, wait_ms: float, max_texts: int, workers: int = 1) -> None:
        """Gather concurrent callers of the configured embedder (a server's /embed,
        /v1/embeddings and search queries) into shared model calls, under the cache so only
        misses are gathered (``runtime.batching``), ``workers`` calls at once. ``max_texts``
        0 or 1: leave it off. A server turns it on; the CLI's bulk paths batch by themselves
        and do not."""
        if max_texts <= 1 or self._batcher is not None:
            return
        batcher = BatchingEmbedder(self.embedder.embedder, wait_ms=wait_ms,
                                   max_texts=max_texts, workers=workers)
        served = copy.copy(self.embedder)  # the same cache and price, the batcher inside
        served.embedder = batcher
        self.embedder, self._batcher = served, batcher

    @property
    def batcher(self) -> BatchingEmbedder | None:
        """The batcher ``batch_embeddings`` put in place, if any (its counters)."""
        return self._batcher

    def warm_up(self) -> None:
        """Load the configured model now (a server's readiness), not on the first query:
        the cache is bypassed so the model really runs."""
        self.embedder.embedder.embed(["warm up"], InputType.QUERY)

    def executor(self) -> ThreadPoolExecutor:
        """A small pool for overlapping the halves of a hybrid query; made on first use."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=4,
                                                    thread_name_prefix="semsearch")
            return self._executor

    @property
    def reranker(self) -> Reranker | None:
        """The configured re-ranker, built on first use (a local model loads only when a
        search asks to re-rank); None when SEMSEARCH_RERANKER is unset."""
        with self._lock:
            if not self._reranker_built:
                factory = self.reranker_factory
                self._reranker = factory() if factory is not None else None
                self._reranker_built = True
            return self._reranker

    def close(self) -> None:
        try:
            if self._batcher is not None:  # serve what is queued before the cache closes
                self._batcher.close()
            if self._reranker is not None:
                self._reranker.close()
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            for name in list(self._indexes):
                self.forget_indexes(name)
            self.embedder.cache.close()
            if self.llm is not None:
                self.llm.close()
            self.index_storage.close()
            self.store.close()
        finally:
            self.telemetry.shutdown()  # flush: a CLI run's spans leave with the process
