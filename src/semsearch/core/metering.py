"""Counters for provider calls and cache use. Providers record into a ProviderMeter; the
ingest and search services read deltas around their calls to report a run, and the store
keeps the cumulative sums per collection."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np


def percentiles(latencies_ms: list[float] | tuple[float, ...]) -> dict[str, float]:
    if not latencies_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    arr = np.asarray(latencies_ms)
    return {f"p{p}": round(float(np.percentile(arr, p)), 3) for p in (50, 95, 99)}


@dataclass(frozen=True)
class MeterSnapshot:
    """Counters at one moment; ``latency_count`` marks where later latencies start."""

    calls: int = 0
    items: int = 0
    tokens: int = 0
    truncated: int = 0
    retries: int = 0
    errors: int = 0
    latency_count: int = 0

    def minus(self, before: MeterSnapshot) -> MeterSnapshot:
        return MeterSnapshot(
            calls=self.calls - before.calls, items=self.items - before.items,
            tokens=self.tokens - before.tokens, truncated=self.truncated - before.truncated,
            retries=self.retries - before.retries, errors=self.errors - before.errors,
            latency_count=self.latency_count - before.latency_count)


# A server embeds every query through the meter: keep a bounded tail of latencies so the
# meter neither grows forever nor makes each snapshot cost O(history).
_KEEP_LATENCIES = 100_000

# (meter, sink) pairs: while a block runs under ``ProviderMeter.collecting``, what that meter
# records in this context is recorded in the sink too.
_SINKS: ContextVar[tuple[tuple[ProviderMeter, ProviderMeter], ...]] = ContextVar(
    "semsearch_meter_sinks", default=())


@dataclass
class ProviderMeter:
    """Thread-safe: HTTP providers record from several worker threads at once."""

    calls: int = 0
    items: int = 0
    tokens: int = 0
    truncated: int = 0
    retries: int = 0
    errors: int = 0
    _latencies: list[float] = field(default_factory=list, repr=False)
    _dropped: int = 0  # latencies trimmed from the front of _latencies
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    keep: ClassVar[int | None] = None  # latencies kept; None: _KEEP_LATENCIES

    def record_call(self, items: int, tokens: int, seconds: float) -> None:
        for meter, sink in _SINKS.get():
            if meter is self:
                sink.record_call(items, tokens, seconds)
        with self._lock:
            self.calls += 1
            self.items += items
            self.tokens += tokens
            self._latencies.append(seconds * 1000)
            keep = _KEEP_LATENCIES if self.keep is None else self.keep
            if len(self._latencies) > 2 * keep:
                cut = len(self._latencies) - keep
                del self._latencies[:cut]
                self._dropped += cut

    def add(self, *, truncated: int = 0, retries: int = 0, errors: int = 0) -> None:
        for meter, sink in _SINKS.get():
            if meter is self:
                sink.add(truncated=truncated, retries=retries, errors=errors)
        with self._lock:
            self.truncated += truncated
            self.retries += retries
            self.errors += errors

    @contextlib.contextmanager
    def collecting(self) -> Iterator[ProviderMeter]:
        """A meter of what this one records inside the block, in this context (and in
        threads run with a copy of it): one call's own cost even while other threads call
        the same embedder, where a delta of this meter would count their calls too (a
        server's batcher runs one call per core at once)."""
        sink = ProviderMeter()
        token = _SINKS.set((*_SINKS.get(), (self, sink)))
        try:
            yield sink
        finally:
            _SINKS.reset(token)

    def snapshot(self) -> MeterSnapshot:
        with self._lock:
            return MeterSnapshot(self.calls, self.items, self.tokens, self.truncated,
                                 self.retries, self.errors,
                                 self._dropped + len(self._latencies))

    def latencies_since(self, snapshot: MeterSnapshot) -> list[float]:
        """Latencies recorded after ``snapshot`` (those still kept)."""
        with self._lock:
            return self._latencies[max(snapshot.latency_count - self._dropped, 0):]


@dataclass
class CacheMeter:
    """Cache outcomes, including the degrade path (backend down, corrupt values)."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    corrupt: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, hits: int = 0, misses: int = 0, errors: int = 0, corrupt: int = 0) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses
            self.errors += errors
            self.corrupt += corrupt

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            d = asdict(self)
        d.pop("_lock", None)
        return d


# Cumulative latency percentiles over many runs without keeping every sample: a fixed
# log-spaced histogram (0.05 ms .. ~100 s, 8 buckets per doubling, so within ~9 %).
_EDGES = 0.05 * 2 ** (np.arange(0, 21 * 8 + 1) / 8)


def latency_histogram(latencies_ms: list[float] | tuple[float, ...]) -> list[int]:
    counts = np.zeros(len(_EDGES) + 1, dtype=np.int64)
    if latencies_ms:
        np.add.at(counts, np.searchsorted(_EDGES, np.asarray(latencies_ms)), 1)
    return [int(c) for c in counts]


def histogram_percentiles(counts: list[int]) -> dict[str, float]:
    """Upper edge of the bucket holding each percentile (a slight over-estimate)."""
    total = sum(counts)
    if total == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    cum = np.cumsum(counts)
    out = {}
    for p in (50, 95, 99):
        i = int(np.searchsorted(cum, total * p / 100))
        out[f"p{p}"] = round(float(_EDGES[min(i, len(_EDGES) - 1)]), 3)
    return out
