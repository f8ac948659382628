"""Embedding through the cache: only texts never seen under this identity reach the model.

Every call can be metered into an EmbedStats: cache hits and misses, what the provider
reported (calls, tokens, latency, retries, truncations), the cost of those tokens and the
cost the cache saved (tokens of the texts it served, at the same price)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semsearch.core.cache_keys import cache_key
from semsearch.core.metering import MeterSnapshot, percentiles
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError
from semsearch.ports import Embedder, EmbeddingCache, Tokenizer, Vectors


@dataclass
class EmbedStats:
    """Counters for one run; summaries, run history and metrics read them."""

    texts: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    embedded: int = 0
    provider_calls: int = 0
    tokens: int = 0
    truncated: int = 0
    retries: int = 0
    cost: float = 0.0
    saved_cost: float = 0.0
    seconds: float = 0.0
    cache_errors: int = 0  # failed calls to the cache backend (an outage); embedding went on
    latencies_ms: list[float] = field(default_factory=list)

    def add_provider(self, delta: MeterSnapshot, latencies_ms: list[float],
                     price_per_mtok: float) -> None:
        self.provider_calls += delta.calls
        self.tokens += delta.tokens
        self.truncated += delta.truncated
        self.retries += delta.retries
        self.cost += delta.tokens * price_per_mtok / 1e6
        self.latencies_ms.extend(latencies_ms)

    def latency(self) -> dict[str, float]:
        return percentiles(self.latencies_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"texts": self.texts, "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses, "embedded": self.embedded,
                "provider_calls": self.provider_calls, "tokens": self.tokens,
                "truncated": self.truncated, "retries": self.retries,
                "cost": round(self.cost, 9), "saved_cost": round(self.saved_cost, 9),
                "cache_errors": self.cache_errors, "provider_latency_ms": self.latency()}


def cache_errors(cache: Any) -> int:
    """Failed backend calls of a cache and the caches it wraps (an LRU in front of Redis):
    the outage count a run reports."""
    total = 0
    while cache is not None:
        meter = getattr(cache, "meter", None)
        total += int(getattr(meter, "errors", 0) or 0)
        cache = getattr(cache, "inner", None)
    return total


class CachedEmbedder:
    def __init__(self, embedder: Embedder, cache: EmbeddingCache,
                 price_per_mtok: float = 0.0) -> None:
        self.embedder = embedder
        self.cache = cache
        self.price_per_mtok = price_per_mtok

    @property
    def identity(self) -> EmbedderIdentity:
        return self.embedder.identity

    @property
    def tokenizer(self) -> Tokenizer:
        return self.embedder.tokenizer

    def cache_key(self, input_type: InputType, text: str) -> str:
        """The key ``text``'s vector is cached under (what a re-index plan looks up to count
        the chunks already cached); an adapted embedder keys by its base model's identity."""
        return cache_key(self.embedder.identity, input_type, text)

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for ``text``: special tokens added, clamped to its window."""
        return min(self.embedder.tokenizer.count_tokens(text) + 2,
                   self.embedder.identity.max_tokens)

    def embed(self, texts: Sequence[str], input_type: InputType,
              stats: EmbedStats | None = None) -> Vectors:
        identity = self.embedder.identity
        keys = [cache_key(identity, input_type, t) for t in texts]
        errors_before = cache_errors(self.cache) if stats is not None else 0
        found = self.cache.get_many(keys)
        # A vector of the wrong length is a miss: it gets recomputed and overwritten.
        found = {k: v for k, v in found.items() if v.shape == (identity.dimension,)}
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            first_text: dict[str, str] = {}
            for k, t in zip(keys, texts, strict=True):
                first_text.setdefault(k, t)
            todo = [first_text[k] for k in missing]
            meter = self.embedder.meter
            before = meter.snapshot()
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
                stats.add_provider(meter.snapshot().minus(before),
                                   meter.latencies_since(before), self.price_per_mtok)
        if stats is not None:
            stats.cache_errors += cache_errors(self.cache) - errors_before
            hit_texts = [t for k, t in zip(keys, texts, strict=True) if k not in missing]
            stats.texts += len(texts)
            stats.cache_hits += len(hit_texts)
            stats.cache_misses += len(texts) - len(hit_texts)
            if hit_texts and self.price_per_mtok > 0:
                saved = sum(self.count_tokens(t) for t in hit_texts)
                stats.saved_cost += saved * self.price_per_mtok / 1e6
        out = np.empty((len(texts), identity.dimension), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out
