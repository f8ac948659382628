"""A many-batch call spread over two single-thread sessions gives the very vectors of one
session (each batch holds the same texts either way), as do calls running at once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder, _spread
from semsearch.core.types import InputType
from tests.conftest import DATA


def _abstracts(n: int) -> list[str]:
    with (DATA / "scifact" / "corpus.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line)["text"][:200 + 11 * i] for i, line in
                zip(range(n), fh, strict=False)]


def test_two_workers_give_the_same_vectors(models_dir: Path,
                                           embedder: LocalOnnxEmbedder) -> None:
    texts = _abstracts(40)
    spread = LocalOnnxEmbedder(models_dir, threads=2, workers=2)
    assert spread._pool == []  # made on the first call
    spread.embed(["one query"], InputType.QUERY)
    assert len(spread._pool) == 2
    assert spread._session is None  # no session of all the threads beside the pool
    got = spread.embed(texts)
    np.testing.assert_allclose(got, embedder.embed(texts), atol=1e-6)
    assert spread.meter.snapshot().items == len(texts) + 1


def test_a_failing_batch_raises_in_the_caller() -> None:
    done: list[int] = []

    def ok(idx: list[int]) -> None:
        done.extend(idx)

    def bad(idx: list[int]) -> None:
        raise RuntimeError(f"batch {idx} failed")

    with pytest.raises(RuntimeError, match="failed"):
        _spread([[i] for i in range(20)], [bad, bad])
    done.clear()
    _spread([[i] for i in range(20)], [ok, ok])
    assert sorted(done) == list(range(20))  # every batch once


def test_fewer_batches_than_runners_start_no_idle_thread() -> None:
    """One batch (a lone query) runs in the caller's thread, not in a thread of its own
    beside another that finds nothing to take: 1.44 -> 1.05 ms per lone query with two
    sessions (bench/RESULTS.md, "The server's sessions")."""
    import threading

    callers: list[tuple[str, int]] = []

    def runner(name: str) -> Callable[[list[int]], None]:
        return lambda idx: callers.append((name, threading.get_ident()))

    _spread([[0]], [runner("first"), runner("second")])
    assert callers == [("first", threading.get_ident())]
    callers.clear()
    _spread([[0], [1], [2]], [runner("first"), runner("second")])
    assert len(callers) == 3 and threading.get_ident() not in {t for _, t in callers}


def test_the_workers_setting_reaches_the_local_embedder(tmp_path: Path) -> None:
    from semsearch.config import Settings
    from semsearch.wiring import make_embedder

    embedder = make_embedder(Settings(home=tmp_path, embedder_workers=2))
    assert isinstance(embedder, LocalOnnxEmbedder) and embedder._workers == 2


def test_calls_in_flight_at_once_each_take_a_session_of_their_own(
        models_dir: Path, embedder: LocalOnnxEmbedder) -> None:
    import threading

    texts = [f"question {i} about {w}" for i, w in enumerate(["soil", "bread", "tyres"] * 4)]
    # each alone, as the calls below embed them (an int8 vector depends on its batch)
    ref = np.vstack([embedder.embed([t], InputType.QUERY) for t in texts])
    spread = LocalOnnxEmbedder(models_dir, threads=2, workers=2)
    spread._calls = 1  # as if another call were running: this one takes a pool session
    np.testing.assert_allclose(spread.embed(texts[:1], InputType.QUERY), ref[:1], atol=1e-6)
    assert len(spread._pool) == 2 and spread._calls == 1
    spread._calls = 0
    got: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        for _ in range(5):
            got[i] = spread.embed([texts[i]], InputType.QUERY)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert spread._calls == 0 and len(got) == len(texts)
    np.testing.assert_allclose(np.vstack([got[i] for i in range(len(texts))]), ref, atol=1e-6)
