"""Derived indexes of one collection, kept in step with the canonical store.

The store's per-collection ``generation`` is the source of truth: indexes are saved with
the generation they reflect, and when they disagree (a crash between the store's commit and
the index save, deleted index files, a changed index format) the whole index is rebuilt from
the canonical chunks, with vectors coming back from the embedding cache."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from semsearch.core.rwlock import RWLock
from semsearch.core.types import Chunk, InputType
from semsearch.ports import DocumentStore, KeywordIndex, VectorIndex, Vectors, WriteResult
from semsearch.services.embedding import CachedEmbedder, EmbedStats

log = logging.getLogger(__name__)


def keyword_text(chunk: Chunk) -> str:
    return chunk.embed_text


@dataclass
class CollectionIndexes:
    name: str
    vectors: VectorIndex
    keyword: KeywordIndex
    lock: threading.RLock = field(default_factory=threading.RLock)
    rw: RWLock = field(default_factory=RWLock)  # searches read; batch writes write

    def apply(self, result: WriteResult, vectors: Vectors) -> None:
        """Reflect one committed store write: drop replaced chunks, add new ones."""
        with self.lock:
            if result.removed:
                self.vectors.remove(result.removed)
                self.keyword.remove(result.removed)
            if result.added:
                labels = [label for label, _ in result.added]
                self.vectors.add(labels, vectors)
                self.keyword.add([(label, keyword_text(ch)) for label, ch in result.added])

    def save(self, generation: int) -> None:
        with self.lock:
            self.vectors.save(generation)
            self.keyword.save(generation)

    def is_fresh(self, generation: int) -> bool:
        return self.vectors.generation == generation and self.keyword.generation == generation

    def rebuild(self, store: DocumentStore, embedder: CachedEmbedder, generation: int,
                on_progress: Callable[[int], None] | None = None) -> EmbedStats:
        stats = EmbedStats()
        with self.lock:
            log.info("rebuilding derived indexes of %r at generation %d", self.name, generation)
            self.vectors.clear()
            self.keyword.clear()
            for batch in store.iter_chunks(self.name, batch=512):
                texts = [s.chunk.embed_text for s in batch]
                vecs = embedder.embed(texts, InputType.PASSAGE, stats)
                labels = [s.label for s in batch]
                self.vectors.add(labels, vecs)
                self.keyword.add([(s.label, keyword_text(s.chunk)) for s in batch])
                if on_progress is not None:
                    on_progress(len(batch))
            self.save(generation)
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
