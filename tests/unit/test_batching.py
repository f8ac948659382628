"""Dynamic batching (runtime.batching): concurrent callers share model calls and each gets
exactly its own rows, its own errors and its own share of the usage.

Most tests run over the deterministic fake embedder behind a gate (a real ``Embedder``
that holds its calls until the test opens it), so which requests share a call is decided
by the test, not by thread timing; one test runs the real local model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from semsearch.adapters.caches.sqlite import NullEmbeddingCache
from semsearch.adapters.embedders.fake import FakeEmbedder
from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.core.types import InputType
from semsearch.errors import InputError
from semsearch.ports import Vectors
from semsearch.runtime.batching import BatchingEmbedder
from semsearch.runtime.embedding import CachedEmbedder, EmbedStats

Q, P = InputType.QUERY, InputType.PASSAGE


class GatedEmbedder(FakeEmbedder):
    """The fake embedder, whose calls wait for ``gate`` and are recorded (texts, type)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a call has started (and may be held at the gate)
        self.calls: list[tuple[list[str], InputType]] = []

    def embed(self, texts: Sequence[str], input_type: InputType = P) -> Vectors:
        self.calls.append((list(texts), input_type))
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().embed(texts, input_type)


def in_threads(jobs: list[Callable[[], Any]]) -> tuple[list[Any], list[threading.Thread]]:
    """Start one thread per job; results (or the exception raised) land in the list."""
    out: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            out[i] = jobs[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    return out, threads


def join(threads: list[threading.Thread], timeout: float = 30) -> None:
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a caller is still waiting"


def queue_behind_held_call(inner: GatedEmbedder, batcher: BatchingEmbedder,
                           jobs: list[Callable[[], Any]]) -> tuple[list[Any], list[Any]]:
    """Hold the worker in a first call, queue ``jobs`` behind it, then release: the jobs
    are gathered into the worker's next batch. Returns (first's result, jobs' results)."""
    inner.gate.clear()
    inner.entered.clear()
    first, first_threads = in_threads([lambda: batcher.embed(["the first one"], Q)])
    assert inner.entered.wait(10)
    out, threads = in_threads(jobs)
    deadline = time.monotonic() + 10
    while batcher._queue.qsize() < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.005)
    inner.gate.set()
    join(first_threads + threads)
    return first, out


def test_concurrent_callers_get_their_own_rows_from_one_call() -> None:
    inner = GatedEmbedder()
    batcher = BatchingEmbedder(inner, wait_ms=0, max_texts=64)
    asks = [([f"caller {i} text {j} word{i * 7 + j}" for j in range(1 + i % 3)], Q if i % 2 else P)
            for i in range(10)]
    asks.append((["caller 0 text 0 word0", "shared duplicate text"], P))  # a repeat across callers
    try:
        _, out = queue_behind_held_call(
            inner, batcher, [lambda t=t, it=it: batcher.embed(t, it) for t, it in asks])
    finally:
        batcher.close()
    reference = FakeEmbedder()
    for (texts, input_type), got in zip(asks, out, strict=True):
        assert not isinstance(got, Exception), got
        assert got.shape == (len(texts), 384)
        np.testing.assert_allclose(got, reference.embed(texts, input_type), atol=1e-6)
    # the first call alone, then one call per input type for the ten gathered requests
    assert len(inner.calls) == 3
    assert sorted(it.value for _, it in inner.calls[1:]) == sorted({Q.value, P.value})
    gathered = sum(len(texts) for texts, _ in inner.calls[1:])
    assert gathered == len({(t, it) for texts, it in asks for t in texts})  # duplicates once
    c = batcher.counters
    assert (c.requests, c.largest, c.retried, c.bypassed) == (12, 11, 0, 0)


class SymmetricGated(GatedEmbedder):
    """The gated fake declaring what it is: it embeds queries and passages alike."""

    symmetric = True


def test_a_symmetric_embedder_gets_one_call_for_queries_and_passages_together(
        embedder: LocalOnnxEmbedder) -> None:
    # The declaration must be true of the local model: the same text, the same vector.
    assert embedder.symmetric
    both = ["a short query", "a passage about gardens and compost, somewhat longer"]
    assert np.array_equal(embedder.embed(both, Q), embedder.embed(both, P))
    inner = SymmetricGated()
    batcher = BatchingEmbedder(inner, wait_ms=0, max_texts=64)
    asks = [([f"caller {i} text {j}" for j in range(1 + i % 3)], Q if i % 2 else P)
            for i in range(6)]
    asks.append((["caller 1 text 0"], P))  # the same text as a query and as a passage
    try:
        _, out = queue_behind_held_call(
            inner, batcher, [lambda t=t, it=it: batcher.embed(t, it) for t, it in asks])
    finally:
        batcher.close()
    for (texts, input_type), got in zip(asks, out, strict=True):
        assert not isinstance(got, Exception), got
        np.testing.assert_allclose(got, FakeEmbedder().embed(texts, input_type), atol=1e-6)
    assert len(inner.calls) == 2  # the first call alone, then everything gathered in one
    assert len(inner.calls[1][0]) == len({t for texts, _ in asks for t in texts})


def test_bad_input_fails_only_its_caller() -> None:
    inner = GatedEmbedder()
    batcher = BatchingEmbedder(inner, wait_ms=0, max_texts=64)
    jobs: list[Callable[[], Any]] = [lambda i=i: batcher.embed([f"good text {i}"], Q)
                                     for i in range(4)]
    jobs.insert(2, lambda: batcher.embed(["fine", "   "], Q))  # empty: the model refuses it
    try:
        _, out = queue_behind_held_call(inner, batcher, jobs)
    finally:
        batcher.close()
    assert isinstance(out[2], InputError)
    good = [o for i, o in enumerate(out) if i != 2]
    assert all(isinstance(o, np.ndarray) and o.shape == (1, 384) for o in good), good
    assert batcher.counters.retried == 5  # the shared call failed; each retried alone


def test_a_lone_caller_does_not_wait_and_a_crowded_batch_waits_at_most_wait_ms() -> None:
    inner = GatedEmbedder()
    wait_s = 0.4
    batcher = BatchingEmbedder(inner, wait_ms=wait_s * 1000, max_texts=8)
    try:
        started = time.perf_counter()
        batcher.embed(["alone"], Q)  # nothing concurrent seen yet: no wait
        assert time.perf_counter() - started < wait_s
        # two requests gathered: traffic is concurrent, so the next batch waits for company
        queue_behind_held_call(inner, batcher, [lambda: batcher.embed(["a"], Q),
                                                lambda: batcher.embed(["b"], Q)])
        started = time.perf_counter()
        batcher.embed(["waits for company"], Q)
        waited = time.perf_counter() - started
        assert wait_s * 0.9 <= waited < wait_s + 10  # waited, but not forever
        started = time.perf_counter()
        batcher.embed(["alone again"], Q)  # that batch had one request: no wait now
        assert time.perf_counter() - started < wait_s
        # a full batch does not wait: max_texts reached ends the gathering
        queue_behind_held_call(inner, batcher, [lambda: batcher.embed(["c"], Q),
                                                lambda: batcher.embed(["d"], Q)])
        started = time.perf_counter()
        batcher.embed([f"full {i}" for i in range(8)], Q)
        assert time.perf_counter() - started < wait_s
    finally:
        batcher.close()


def test_large_requests_go_straight_through_and_batches_stay_under_max_texts() -> None:
    inner = GatedEmbedder()
    batcher = BatchingEmbedder(inner, wait_ms=0, max_texts=5)
    try:
        big = [f"bulk text {i}" for i in range(12)]
        np.testing.assert_allclose(batcher.embed(big, P), FakeEmbedder().embed(big, P))
        assert batcher.counters.bypassed == 1
        _, out = queue_behind_held_call(
            inner, batcher, [lambda i=i: batcher.embed([f"t{i}a", f"t{i}b"], Q) for i in range(6)])
    finally:
        batcher.close()
    assert all(isinstance(o, np.ndarray) for o in out)
    assert batcher.counters.most_texts <= 5
    assert all(len(texts) <= 5 for texts, _ in inner.calls if texts != big)


def test_each_caller_is_metered_for_its_own_share() -> None:
    inner = GatedEmbedder()
    batcher = BatchingEmbedder(inner, wait_ms=0, max_texts=64)
    cached = CachedEmbedder(batcher, NullEmbeddingCache())
    asks = [[f"alpha beta gamma {i}"] * 1 + [f"delta {i} epsilon"] * (i % 2) for i in range(6)]
    stats = [EmbedStats() for _ in asks]
    before = inner.meter.snapshot()
    try:
        queue_behind_held_call(inner, batcher, [lambda i=i: cached.embed(asks[i], Q, stats[i])
                                                for i in range(len(asks))])
    finally:
        batcher.close()
    spent = inner.meter.snapshot().minus(before)
    for texts, s in zip(asks, stats, strict=True):
        assert (s.provider_calls, s.embedded, s.cache_misses) == (1, len(texts), len(texts))
        assert s.tokens > 0
    first_call_tokens = 3  # "the first one", which no EmbedStats here saw
    assert sum(s.tokens for s in stats) == spent.tokens - first_call_tokens


class OverlapEmbedder(FakeEmbedder):
    """The fake embedder, whose calls each wait, after recording their cost, until
    ``parties`` calls are inside at once: it returns only if that many run in parallel."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.inside = threading.Barrier(parties)
        self.entered = threading.Event()

    def embed(self, texts: Sequence[str], input_type: InputType = P) -> Vectors:
        out = super().embed(texts, input_type)
        self.entered.set()
        self.inside.wait(10)  # BrokenBarrierError: the calls did not overlap
        return out


def test_workers_run_calls_at_once_each_metered_for_its_own() -> None:
    inner = OverlapEmbedder(parties=2)
    batcher = BatchingEmbedder(inner, wait_ms=0, max_texts=64, workers=2)
    cached = CachedEmbedder(batcher, NullEmbeddingCache())
    asks = [["one two three"], ["four five", "six seven eight nine"]]
    stats = [EmbedStats(), EmbedStats()]
    try:
        first, first_threads = in_threads([lambda: cached.embed(asks[0], Q, stats[0])])
        assert inner.entered.wait(10)  # the first call is in the model: the second is apart
        second, threads = in_threads([lambda: cached.embed(asks[1], Q, stats[1])])
        join(first_threads + threads)
    finally:
        batcher.close()
    for texts, got in zip(asks, first + second, strict=True):
        assert not isinstance(got, Exception), got
        np.testing.assert_allclose(got, FakeEmbedder().embed(texts, Q), atol=1e-6)
    # Each call recorded its cost while the other was running: a delta of the embedder's
    # meter would bill both calls' 9 tokens to each.
    assert [(s.provider_calls, s.embedded, s.tokens) for s in stats] == [(1, 1, 3), (1, 2, 6)]
    assert batcher.counters.batches == 2
    assert not any(w.is_alive() for w in batcher._workers)


def test_close_serves_what_is_queued_and_later_calls_still_work() -> None:
    inner = GatedEmbedder()
    batcher = BatchingEmbedder(inner, wait_ms=0, max_texts=64)
    inner.gate.clear()
    out, threads = in_threads([lambda i=i: batcher.embed([f"queued {i}"], Q) for i in range(5)])
    assert inner.entered.wait(10)
    closing = threading.Thread(target=batcher.close, daemon=True)
    closing.start()
    inner.gate.set()
    join([*threads, closing])
    assert all(isinstance(o, np.ndarray) and o.shape == (1, 384) for o in out), out
    assert not any(w.is_alive() for w in batcher._workers)
    assert batcher.embed(["after close"], Q).shape == (1, 384)  # straight to the model
    started = time.perf_counter()
    batcher.close()  # again: a no-op
    assert time.perf_counter() - started < 5


def test_real_model_concurrent_callers_match_unbatched_vectors(
        embedder: LocalOnnxEmbedder) -> None:
    batcher = BatchingEmbedder(embedder, wait_ms=2, max_texts=64)
    texts = [f"{w} question number {i} about {w}s" for i, w in
             enumerate(["coffee", "bicycle", "garden", "python", "sleep", "solar", "bread",
                        "router"] * 3)]
    barrier = threading.Barrier(len(texts))

    def call(i: int) -> Vectors:
        barrier.wait(10)
        return batcher.embed([texts[i]], Q)

    try:
        out, threads = in_threads([lambda i=i: call(i) for i in range(len(texts))])
        join(threads)
    finally:
        batcher.close()
    got = np.vstack(out)
    ref = embedder.embed(texts, Q)
    # int8 dynamic quantization varies with what shares a batch (padding, activation range)
    assert float(np.min(np.sum(got * ref, axis=1))) > 0.95
    assert np.array_equal(np.argmax(got @ ref.T, axis=1), np.arange(len(texts)))  # no mix-up
    assert batcher.counters.requests == len(texts)
    assert batcher.counters.batches < len(texts)  # some callers shared a call


@pytest.mark.parametrize("kw", [{"wait_ms": -1}, {"max_texts": 0}, {"workers": 0}])
def test_bad_settings_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BatchingEmbedder(FakeEmbedder(), **kw)  # type: ignore[arg-type]


def test_a_callers_meter_keeps_a_short_tail_and_right_deltas() -> None:
    batcher = BatchingEmbedder(FakeEmbedder(), wait_ms=0, max_texts=8)
    try:
        meter = batcher.meter
        assert batcher.meter is meter  # one per thread, kept
        for i in range(2500):
            before = meter.snapshot()
            batcher.embed([f"text {i}"], Q)
            assert len(meter.latencies_since(before)) == 1
            assert meter.snapshot().minus(before).items == 1
        assert len(meter._latencies) <= 2000
    finally:
        batcher.close()
