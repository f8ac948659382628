"""Dynamic batching: concurrent callers' texts gathered into shared model calls.

A server embeds many small requests at once (``/embed``, ``/v1/embeddings`` and every search's
query). Called side by side, each runs the model on its own few texts and they fight over
the cores. Gathered, they run one after another without that contention, and a remote API
gets one request instead of many. What gathering does not buy on a CPU: the local model's
cost is its padded tokens (~0.1 ms each, ~0.2 ms per call beyond them, on 2 AMD EPYC
cores), so a call of 8 texts costs about what 8 calls of 1 cost, and only if the embedder
does not pad the short texts to the long ones (``plan_batches``; bench/batching_ceiling.py
measures the ceiling).
``BatchingEmbedder`` wraps an embedder with the same interface: a caller puts its texts on a
queue and waits; a worker thread takes what is waiting (up to ``max_texts``), waits at most
``wait_ms`` after the first request for more (as TEI and Infinity do), groups the texts by
input type (all in one group for an embedder that declares ``symmetric = True``: one that
embeds queries and passages alike, as the local models do), runs the model once per group and
hands each caller its rows.

``workers`` such threads take turns at the queue (a server uses one per core). With one, every
model call waited for the one before, and the one call in flight did not fill the machine:
its operators split over the cores wait for each other at every step, and the request
threads' Python work holds the GIL in between. Two calls in flight, each on a one-thread
session, keep both cores busy (bench/RESULTS.md, "the HTTP path").

It sits *under* the cache (``CachedEmbedder(BatchingEmbedder(model), cache)``): lookups stay
per request and only the texts the cache misses are gathered.

- The wait costs a lone caller latency and buys nothing, so the worker waits only while
  traffic is concurrent (the last batch gathered more than one request); a single client
  never waits. While the model runs, new requests queue up anyway and form the next batch.
- A request larger than ``max_texts`` (a bulk upsert) skips the queue and calls the model
  in its own thread, as before: it would only hold small requests up.
- One bad text must not fail the others: when a shared call fails, each request of it is
  retried alone, so the error reaches only the caller whose texts caused it.
- Stats: callers meter a call by reading ``meter`` before and after it (``EmbedStats``), so
  ``meter`` is the calling thread's own: the worker gives each caller its share of the shared
  call (its texts, its part of the tokens, the call's latency), not everyone's counts. The
  wrapped embedder's own meter still counts every real model call.
- ``close`` serves what is queued, then stops the workers; later calls go straight to the
  model, so a request racing the shutdown is answered rather than left waiting."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from semsearch.core.metering import MeterSnapshot, ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError
from semsearch.ports import Embedder, Tokenizer, Vectors


@dataclass
class _Request:
    """One caller's texts, and what the worker leaves for it."""

    texts: list[str]
    input_type: InputType
    done: threading.Event = field(default_factory=threading.Event)
    vectors: Vectors | None = None
    error: BaseException | None = None
    usage: MeterSnapshot = field(default_factory=MeterSnapshot)  # this caller's share
    seconds: float = 0.0  # the model call(s) that served it

    def finish(self, vectors: Vectors | None = None, error: BaseException | None = None,
               usage: MeterSnapshot | None = None, seconds: float = 0.0) -> None:
        self.vectors, self.error, self.seconds = vectors, error, seconds
        if usage is not None:
            self.usage = usage
        self.done.set()


class _CallerMeter(ProviderMeter):
    """A calling thread's meter: read only as deltas around one call, so it keeps a short
    tail of latencies (a server's 40 worker threads each keeping the default 100,000 would
    hold hundreds of MB)."""

    keep = 1000


_STOP = object()  # put on the queue by close(): the worker serves what is before it and ends


@dataclass
class BatchCounters:
    """What the worker did (read by tests and the load test's report)."""

    batches: int = 0  # gathered groups (one model call each, before retries)
    requests: int = 0  # requests served through the queue
    texts: int = 0  # texts those requests carried
    model_texts: int = 0  # texts the shared calls embedded (duplicates across requests once)
    retried: int = 0  # requests retried alone after their shared call failed
    bypassed: int = 0  # requests too large to gather (or after close): embedded directly
    largest: int = 0  # most requests in one batch
    most_texts: int = 0  # most texts in one batch


def _shares(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights``, in whole units that add up to it."""
    whole = sum(weights)
    if total <= 0 or whole <= 0:
        return [0] * len(weights)
    raw = [total * w / whole for w in weights]
    out = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


class BatchingEmbedder:
    """An ``Embedder`` whose concurrent callers share model calls; see the module docstring.

    ``wait_ms``: how long the worker waits for more requests after the first of a batch
    (only while traffic is concurrent; 0: never wait, take only what is already queued).
    ``max_texts``: texts in one gathered call; a request with more goes straight through.
    ``workers``: model calls in flight at once, each gathering its own batch."""

    def __init__(self, inner: Embedder, *, wait_ms: float = 2.0, max_texts: int = 64,
                 workers: int = 1) -> None:
        if wait_ms < 0 or max_texts < 1 or workers < 1:
            raise ValueError("need wait_ms >= 0, max_texts >= 1 and workers >= 1, got "
                             f"{wait_ms}, {max_texts}, {workers}")
        self.inner = inner
        self.wait_s = wait_ms / 1000
        self.max_texts = max_texts
        self.counters = BatchCounters()
        self._queue: queue.Queue[_Request | object] = queue.Queue()
        self._local = threading.local()
        self._lock = threading.Lock()  # orders submissions against close()
        self._closed = False
        self._crowded = False  # the last batch gathered several requests: worth waiting
        self._workers = [threading.Thread(target=self._run, name=f"semsearch-batcher-{i}",
                                          daemon=True) for i in range(workers)]
        for worker in self._workers:
            worker.start()

    # -- the Embedder interface ----------------------------------------------------------
    @property
    def identity(self) -> EmbedderIdentity:
        return self.inner.identity

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inner.tokenizer

    @property
    def meter(self) -> ProviderMeter:
        """The calling thread's meter: what this thread's calls cost (its share of shared
        calls). Callers read it before and after a call, in their own thread."""
        meter: ProviderMeter | None = getattr(self._local, "meter", None)
        if meter is None:
            meter = self._local.meter = _CallerMeter()
        return meter

    @meter.setter
    def meter(self, value: ProviderMeter) -> None:  # the Embedder protocol's attribute
        self._local.meter = value

    def embed(self, texts: Sequence[str], input_type: InputType) -> Vectors:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.identity.dimension), dtype=np.float32)
        req = _Request(texts, input_type)
        with self._lock:
            queued = not self._closed and len(texts) <= self.max_texts
            if queued:
                self._queue.put(req)
        if not queued:
            return self._direct(texts, input_type)
        req.done.wait()
        self._record(req.usage, req.seconds)
        if req.error is not None:
            raise req.error
        assert req.vectors is not None
        return req.vectors

    def close(self, timeout: float = 30.0) -> None:
        """Serve what is queued, stop the workers (idempotent). Calls made afterwards embed
        directly."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._workers:  # each worker ends at the first it takes
                    self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    # -- callers' side -------------------------------------------------------------------
    def _direct(self, texts: list[str], input_type: InputType) -> Vectors:
        """Embed in the calling thread (too large to gather, or closed), billed what the
        wrapped meter recorded for this call alone."""
        with self._lock:
            self.counters.bypassed += 1
        started = time.perf_counter()
        with self.inner.meter.collecting() as used:
            try:
                return self.inner.embed(texts, input_type)
            finally:
                self._record(used.snapshot(), time.perf_counter() - started)

    def _record(self, usage: MeterSnapshot, seconds: float) -> None:
        mine = self.meter
        if usage.calls or usage.items:
            mine.record_call(usage.items, usage.tokens, seconds)
        if usage.truncated or usage.retries or usage.errors:
            mine.add(truncated=usage.truncated, retries=usage.retries, errors=usage.errors)

    # -- the worker ------------------------------------------------------------------------
    def _run(self) -> None:
        carried: _Request | None = None  # a request that did not fit the last batch
        stopping = False
        while not stopping:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is _STOP:
                return
            assert isinstance(first, _Request)
            batch, size = [first], len(first.texts)
            deadline = time.monotonic() + (self.wait_s if self._crowded else 0.0)
            while size < self.max_texts:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Request)
                if size + len(item.texts) > self.max_texts:
                    carried = item
                    break
                batch.append(item)
                size += len(item.texts)
            self._crowded = len(batch) > 1
            try:
                self._serve(batch)
            except BaseException as exc:  # never leave a caller waiting
                for req in batch:
                    if not req.done.is_set():
                        req.finish(error=exc)

    def _serve(self, batch: list[_Request]) -> None:
        with self._lock:
            c = self.counters
            c.requests += len(batch)
            c.texts += sum(len(r.texts) for r in batch)
            c.largest = max(c.largest, len(batch))
            c.most_texts = max(c.most_texts, sum(len(r.texts) for r in batch))
        if getattr(self.inner, "symmetric", False):  # one call whatever each asked for
            self._serve_group(batch[0].input_type, batch)
            return
        groups: dict[InputType, list[_Request]] = {}
        for req in batch:
            groups.setdefault(req.input_type, []).append(req)
        for input_type, reqs in groups.items():
            self._serve_group(input_type, reqs)

    def _serve_group(self, input_type: InputType, reqs: list[_Request]) -> None:
        unique = list(dict.fromkeys(t for r in reqs for t in r.texts))
        with self._lock:
            self.counters.batches += 1
            self.counters.model_texts += len(unique)
        try:
            vectors, usage, seconds = self._call(unique, input_type)
        except Exception as exc:
            if len(reqs) == 1:
                reqs[0].finish(error=exc)
                return
            with self._lock:
                self.counters.retried += len(reqs)
            for req in reqs:  # alone, so only the request at fault sees the error
                try:
                    vectors, usage, seconds = self._call(req.texts, input_type)
                except Exception as alone:
                    req.finish(error=alone)
                else:
                    req.finish(vectors, usage=usage, seconds=seconds)
            return
        row = {t: i for i, t in enumerate(unique)}
        weights = [sum(len(t) for t in r.texts) for r in reqs]  # tokens split by characters
        tokens = _shares(usage.tokens, weights)
        truncated = _shares(usage.truncated, weights)
        retries = _shares(usage.retries, weights)
        for i, req in enumerate(reqs):
            share = MeterSnapshot(calls=1, items=len(req.texts), tokens=tokens[i],
                                  truncated=truncated[i], retries=retries[i])
            req.finish(vectors[[row[t] for t in req.texts]], usage=share, seconds=seconds)

    def _call(self, texts: list[str], input_type: InputType,
              ) -> tuple[Vectors, MeterSnapshot, float]:
        """One call of the wrapped embedder, with what it cost: what its meter recorded in
        this call's context, not a delta of the meter (another worker's call may run at
        the same time)."""
        started = time.perf_counter()
        with self.inner.meter.collecting() as used:
            vectors = self.inner.embed(texts, input_type)
        seconds = time.perf_counter() - started
        dim = self.inner.identity.dimension
        if vectors.shape != (len(texts), dim):
            raise BackendError(f"embedder {self.inner.identity.model} returned shape "
                               f"{vectors.shape}, expected ({len(texts)}, {dim})")
        return vectors, used.snapshot(), seconds
