"""Embedding through the cache: only texts never seen under this identity reach the model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semsearch.core.cache_keys import cache_key
from semsearch.core.types import InputType
from semsearch.errors import BackendError
from semsearch.ports import Embedder, EmbeddingCache, Vectors


@dataclass
class EmbedStats:
    """Counters for one run; the summary and (later) metrics read them."""

    texts: int = 0
    cache_hits: int = 0
    embedded: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, other: EmbedStats) -> None:
        self.texts += other.texts
        self.cache_hits += other.cache_hits
        self.embedded += other.embedded
        self.tokens += other.tokens
        self.seconds += other.seconds


class CachedEmbedder:
    def __init__(self, embedder: Embedder, cache: EmbeddingCache) -> None:
        self.embedder = embedder
        self.cache = cache

    def embed(self, texts: Sequence[str], input_type: InputType,
              stats: EmbedStats | None = None) -> Vectors:
        identity = self.embedder.identity
        keys = [cache_key(identity, input_type, t) for t in texts]
        found = self.cache.get_many(keys)
        found = {k: v for k, v in found.items() if v.shape == (identity.dimension,)}
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            first_text: dict[str, str] = {}
            for k, t in zip(keys, texts, strict=True):
                first_text.setdefault(k, t)
            todo = [first_text[k] for k in missing]
            started = time.perf_counter()
            vectors = self.embedder.embed(todo, input_type)
            if vectors.shape != (len(todo), identity.dimension):
                raise BackendError(
                    f"embedder {identity.model} returned shape {vectors.shape}, expected "
                    f"({len(todo)}, {identity.dimension})")
            fresh = dict(zip(missing, vectors, strict=True))
            self.cache.put_many(fresh)
            found.update(fresh)
            if stats is not None:
                stats.seconds += time.perf_counter() - started
                stats.embedded += len(todo)
                stats.tokens += sum(min(self.embedder.tokenizer.count_tokens(t) + 2,
                                       identity.max_tokens) for t in todo)
        if stats is not None:
            stats.texts += len(texts)
            stats.cache_hits += len(texts) - len(missing)
        out = np.empty((len(texts), identity.dimension), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out
