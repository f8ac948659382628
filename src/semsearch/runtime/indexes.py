"""Derived indexes of one collection, kept in step with the canonical store.

The store's per-collection ``generation`` is the source of truth: indexes are saved with
the generation they reflect, and when they disagree (a crash between the store's commit and
the index save, deleted index files, a changed index format) the whole index is rebuilt from
the canonical chunks, with vectors coming back from the embedding cache."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semsearch.core.rwlock import RWLock
from semsearch.core.types import Chunk, InputType
from semsearch.errors import StorageFullError
from semsearch.ports import (
    ChunkPayload,
    DocumentStore,
    KeywordIndex,
    KeywordItem,
    VectorIndex,
    Vectors,
    WriteResult,
)
from semsearch.runtime.embedding import CachedEmbedder, EmbedStats

log = logging.getLogger(__name__)


def keyword_text(chunk: Chunk) -> str:
    return chunk.embed_text


def keyword_item(label: int, chunk: Chunk) -> KeywordItem:
    """What the keyword index holds for a chunk: its text and its title as two fields (a
    search may weight the title; unweighted they score as ``keyword_text`` would)."""
    return (label, chunk.text, chunk.title)


Opener = Callable[[], tuple[VectorIndex, KeywordIndex]]
# Across processes (``serve --workers N``): one saver or rebuilder per collection.
SharedLock = Callable[[], AbstractContextManager[None]]


@dataclass
class CollectionIndexes:
    """``applied`` is the store generation the in-memory indexes reflect; the files on disk
    may lag behind it (they are saved at the end of a run). Another process's write shows
    up as a generation gap, answered by reloading its saved files or, failing that, by a
    rebuild from the canonical store.

    ``durable`` indexes (in a shared database) are one copy for every process: each write
    applies to them and stamps its generation at once, under the shared lock held from the
    store write on (``writing()``), so the writers of a collection apply in the order they
    committed and a reader never sees a stamp that claims more than the index holds."""

    name: str
    vectors: VectorIndex
    keyword: KeywordIndex
    opener: Opener | None = None
    shared_lock: SharedLock = nullcontext
    durable: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    rw: RWLock = field(default_factory=RWLock)  # searches read; batch writes write
    applied: int = -1

    def __post_init__(self) -> None:
        self.applied = self._saved_generation()

    def _saved_generation(self) -> int:
        gen = self.vectors.generation
        return gen if gen == self.keyword.generation else -1

    def apply(self, result: WriteResult, vectors: Vectors,
              metadata: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Reflect one committed store write: drop replaced chunks, add new ones.
        ``metadata`` (document id -> metadata) goes with the vectors to an index that
        filters by itself."""
        with self.lock:
            if result.removed:
                self.vectors.remove(result.removed)
                self.keyword.remove(result.removed)
            if result.added:
                labels = [label for label, _ in result.added]
                payloads = None
                if self.vectors.filters:
                    meta = metadata or {}
                    payloads = [ChunkPayload(ch.doc_id, meta.get(ch.doc_id, {}))
                                for _, ch in result.added]
                self.vectors.add(labels, vectors, payloads)
                self.keyword.add([keyword_item(label, ch) for label, ch in result.added])
            if self.durable:
                # Under writing(): every earlier commit is applied and stamped already. A
                # stamp only records the generation; a full save (statistics, vacuum) is
                # for the end of a bulk run.
                self.vectors.stamp(result.generation)
                self.keyword.stamp(result.generation)
                self.applied = result.generation
                return
            # A gap means another process committed in between: we hold a partial view.
            self.applied = result.generation if self.applied == result.generation - 1 else -1

    def writing(self) -> AbstractContextManager[None]:
        """Held by a writer from its store write to the end of its apply: the shared lock
        for durable indexes (writers of one collection then apply in commit order), nothing
        for per-process ones."""
        return self.shared_lock() if self.durable else nullcontext()

    def save(self, generation: int) -> None:
        with self.lock, self.shared_lock():
            self.vectors.save(generation)
            self.keyword.save(generation)

    def is_fresh(self, generation: int) -> bool:
        return self.applied == generation

    def is_saved(self, generation: int) -> bool:
        return self._saved_generation() == generation

    def refresh(self, store: DocumentStore, embedder: CachedEmbedder, generation: int) -> None:
        """Catch up with ``generation``: reload another process's saved files if they are
        current, else rebuild. Callers hold ``rw.write()`` so no search is inside."""
        with self.lock, self.shared_lock():
            if self.opener is not None:
                self.keyword.close()
                self.vectors, self.keyword = self.opener()
                self.applied = self._saved_generation()
            if self.applied != generation:
                self._rebuild_locked(store, embedder, generation, must_save=False)

    def rebuild(self, store: DocumentStore, embedder: CachedEmbedder, generation: int,
                on_progress: Callable[[int], None] | None = None) -> EmbedStats:
        with self.lock, self.shared_lock():
            return self._rebuild_locked(store, embedder, generation, on_progress)

    def _rebuild_locked(self, store: DocumentStore, embedder: CachedEmbedder, generation: int,
                        on_progress: Callable[[int], None] | None = None, *,
                        must_save: bool = True) -> EmbedStats:
        stats = EmbedStats()
        log.info("rebuilding derived indexes of %r at generation %d", self.name, generation)
        self.vectors.clear()
        self.keyword.clear()
        for batch in store.iter_chunks(self.name, batch=512):
            texts = [s.chunk.embed_text for s in batch]
            vecs = embedder.embed(texts, InputType.PASSAGE, stats)
            labels = [s.label for s in batch]
            payloads = [ChunkPayload(s.chunk.doc_id, s.metadata) for s in batch] \
                if self.vectors.filters else None
            self.vectors.add(labels, vecs, payloads)
            self.keyword.add([keyword_item(s.label, s.chunk) for s in batch])
            if on_progress is not None:
                on_progress(len(batch))
        try:
            self.vectors.save(generation)
            self.keyword.save(generation)
        except StorageFullError as exc:
            if must_save:
                raise
            # A reader catching up on a full disk: serve the rebuilt indexes from memory; the
            # next save (or the next process, seeing the old generation on disk) writes them.
            log.warning("%s; %r is served from memory until then", exc, self.name)
        self.applied = generation
        return stats

    def close(self) -> None:
        self.keyword.close()


def doc_vector(chunk_vectors: Vectors) -> Vectors:
    """Mean of the chunk vectors, renormalized: the document-level vector."""
    mean = chunk_vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    out: Vectors = (mean / norm if norm > 0 else mean).astype(np.float32)
    return out


def split_vectors(vectors: Vectors, counts: Sequence[int]) -> list[Vectors]:
    out: list[Vectors] = []
    start = 0
    for n in counts:
        out.append(vectors[start:start + n])
        start += n
    return out
