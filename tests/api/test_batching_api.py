"""Dynamic batching in a real uvicorn server: concurrent /embed, /v1/embeddings and search
requests share model calls, and every client still gets exactly its own vectors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.api.state import state_of
from semsearch.config import Settings
from semsearch.core.types import InputType
from tests.api.conftest import LiveServer, make_home

WORDS = ["coffee", "bicycle", "garden", "python", "sleep", "solar", "bread", "router",
         "language", "compost", "tire", "plants"]


def _texts(client: int, round_: int, n: int) -> list[str]:
    """Texts no other request sends (so each one misses the cache and reaches the model)."""
    return [f"{WORDS[(client + j) % len(WORDS)]} note {client}-{round_}-{j} about "
            f"{WORDS[(client * 3 + round_ + j) % len(WORDS)]}" for j in range(n)]


def _batcher_counters(srv: LiveServer) -> Any:
    engine = state_of(srv.app).engine
    assert engine is not None and engine.batcher is not None
    return engine.batcher.counters


def test_concurrent_clients_get_their_own_vectors(live: LiveServer,
                                                  embedder: LocalOnnxEmbedder) -> None:
    with live.client() as c:
        assert c.post("/collections", json={"name": "batch"}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"All about {w}: how to care for a {w}."}
                for i, w in enumerate(WORDS)]
        assert c.post("/collections/batch/documents",
                      json={"documents": docs}).status_code == 200
    before = _batcher_counters(live).requests
    rounds, clients = 3, 12
    got: dict[tuple[str, InputType], np.ndarray] = {}
    problems: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        with live.client() as c:
            barrier.wait(30)
            for r in range(rounds):
                texts = _texts(i, r, 1 + (i + r) % 4)
                if i % 3 == 0:  # the OpenAI-compatible endpoint: passages
                    resp = c.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2",
                                                          "input": texts})
                    rows = [d["embedding"] for d in resp.json()["data"]] \
                        if resp.status_code == 200 else []
                    input_type = InputType.PASSAGE
                elif i % 3 == 1:
                    input_type = InputType.QUERY if r % 2 else InputType.PASSAGE
                    resp = c.post("/embed", json={"texts": texts,
                                                  "input_type": input_type.value})
                    rows = resp.json()["vectors"] if resp.status_code == 200 else []
                else:  # a search embeds its query through the same batcher
                    resp = c.get("/search", params={"q": texts[0], "collection": "batch",
                                                    "mode": "dense", "k": 3})
                    if resp.status_code != 200 or len(resp.json()["hits"]) != 3:
                        with lock:
                            problems.append(f"search -> {resp.status_code} {resp.text[:200]}")
                    continue
                with lock:
                    if resp.status_code != 200 or len(rows) != len(texts):
                        problems.append(f"client {i} -> {resp.status_code} {resp.text[:200]}")
                    for t, v in zip(texts, rows, strict=False):
                        got[(t, input_type)] = np.asarray(v, dtype=np.float32)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not problems, problems
    keys = list(got)
    ref = np.vstack([embedder.embed([t], it)[0] for t, it in keys])
    mine = np.vstack([got[k] for k in keys])
    # int8 dynamic quantization varies with what shares a batch (its padding and
    # activation range): cosines of ~0.97-0.99 to the text embedded alone
    assert float(np.min(np.sum(mine * ref, axis=1))) > 0.95
    assert np.array_equal(np.argmax(mine @ ref.T, axis=1), np.arange(len(keys)))  # no mix-up
    counters = _batcher_counters(live)
    assert counters.requests - before >= clients * rounds  # every miss went through it


def test_a_bad_request_fails_alone(live: LiveServer) -> None:
    results: list[int] = [0] * 8

    def call(i: int) -> None:
        texts = ["\ud800 lone surrogate"] if i == 3 else _texts(100 + i, 0, 2)
        with live.client() as c:
            results[i] = c.post("/embed", content=_json(texts),
                                headers={"content-type": "application/json"}).status_code

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[3] == 422
    assert [r for i, r in enumerate(results) if i != 3] == [200] * 7


def _json(texts: list[str]) -> bytes:
    import json

    return json.dumps({"texts": texts}).encode()


def test_batching_off_and_a_prompt_shutdown(tmp_path: Path, models_dir: Path) -> None:
    srv = LiveServer(Settings(home=make_home(tmp_path, models_dir), embedder_threads=2,
                              batch_max_texts=0)).start()
    try:
        engine = state_of(srv.app).engine
        assert engine is not None and engine.batcher is None
        with srv.client() as c:
            r = c.post("/embed", json={"texts": ["still works"]})
            assert r.status_code == 200 and len(r.json()["vectors"]) == 1
    finally:
        srv.stop()
    on = LiveServer(Settings(home=make_home(tmp_path / "on", models_dir), embedder_threads=2,
                             batch_wait_ms=5, batch_workers=2)).start()
    engine = state_of(on.app).engine
    assert engine is not None and engine.batcher is not None
    batcher = engine.batcher
    assert len(batcher._workers) == 2  # two calls in flight, each on a one-thread session
    model = batcher.inner
    assert isinstance(model, LocalOnnxEmbedder) and model._workers == 2
    started = time.perf_counter()
    on.stop()
    assert not on.thread.is_alive() and time.perf_counter() - started < 30
    assert not any(w.is_alive() for w in batcher._workers)  # the engine closed it


@pytest.fixture(scope="module")
def live(live_factory: Callable[..., LiveServer]) -> LiveServer:
    return live_factory(batch_wait_ms=2)


def test_the_server_gives_each_call_in_flight_a_session_of_its_own(tmp_path: Path) -> None:
    from semsearch.api.app import served_settings

    default = Settings(home=tmp_path)
    assert served_settings(default, 2).embedder_workers == 2
    assert served_settings(default, 1).embedder_workers == 1  # one call at a time
    chosen = Settings(home=tmp_path, embedder_workers=1)  # as SEMSEARCH_EMBEDDER_WORKERS=1
    assert served_settings(chosen, 2).embedder_workers == 1
    off = Settings(home=tmp_path, batch_max_texts=0)
    assert served_settings(off, 2).embedder_workers == 1


def test_cache_writes_are_gathered_when_asked(tmp_path: Path) -> None:
    from semsearch.adapters.caches.lru import LruEmbeddingCache
    from semsearch.adapters.caches.write_behind import WriteBehindCache
    from semsearch.api.app import served_settings
    from semsearch.wiring import make_cache

    # measured no gain in the server: it stays off unless asked for
    assert served_settings(Settings(home=tmp_path), 2).cache_write_delay_ms == 0
    cache = make_cache(Settings(home=tmp_path, cache_write_delay_ms=50))
    try:
        assert isinstance(cache, LruEmbeddingCache) and isinstance(cache.inner, WriteBehindCache)
    finally:
        cache.close()
    cache = make_cache(Settings(home=tmp_path))
    try:
        assert not isinstance(getattr(cache, "inner", None), WriteBehindCache)
    finally:
        cache.close()
