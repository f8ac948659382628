"""Searches racing batch upserts over a real server: a batch is seen whole or not at all.

Each batch's documents share a marker word no other document has ("zebrab3" for batch b3)
and carry the batch in their metadata, so any search result can be checked for a torn
batch: a search must find none of a batch's documents, or every one of them."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.conftest import LiveServer

BATCHES = 8
PER_BATCH = 12
SEARCHERS = 3
DEADLINE_S = 25.0
FILLER = ["harbour", "lantern", "orchard", "granite", "meadow", "copper", "willow", "thistle"]


def _batch_docs(b: int) -> list[dict[str, Any]]:
    return [{"id": f"b{b}-{i}",
             "text": f"Note {i} of batch {b}: zebrab{b} near the {FILLER[i % len(FILLER)]} "
                     f"and the {FILLER[(i + b) % len(FILLER)]}.",
             "metadata": {"batch": f"b{b}", "i": i}}
            for i in range(PER_BATCH)]


def _check(kind: str, b: int, response: httpx.Response, problems: list[str],
           committed: bool = False) -> int:
    """The number of batch ``b``'s documents found, noting a torn batch, or a batch that was
    already committed (its upsert had answered before this search began) but is missing."""
    if response.status_code != 200:
        problems.append(f"{kind} b{b}: HTTP {response.status_code} {response.text[:300]}")
        return -1
    ids = {h["doc_id"] for h in response.json()["hits"]
           if h["metadata"].get("batch") == f"b{b}"}
    if ids and len(ids) != PER_BATCH:
        problems.append(f"{kind} b{b}: torn batch, saw {len(ids)} of {PER_BATCH}: "
                        f"{sorted(ids)}")
    elif committed and not ids:
        problems.append(f"{kind} b{b}: committed batch vanished from results")
    return len(ids)


def test_searches_never_see_a_partial_batch(
        live_factory: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="semsearch.runtime.indexes")
    srv = live_factory()
    with srv.client() as c:
        assert c.post("/collections", json={"name": "docs"}).status_code == 201
        base = [{"id": f"base-{i}", "text": f"An unrelated note about the {w} in spring."}
                for i, w in enumerate(FILLER)]
        assert c.post("/collections/docs/documents", json={"documents": base}).status_code == 200

    started = time.monotonic()
    writer_done = threading.Event()
    problems: list[str] = []
    seen_counts: list[int] = []
    searches = [0]
    committed: set[int] = set()  # batches whose upsert has answered 200
    guard = threading.Lock()

    def writer() -> None:
        try:
            with srv.client() as c:
                for b in range(BATCHES):
                    r = c.post("/collections/docs/documents",
                               json={"documents": _batch_docs(b)})
                    with guard:
                        if r.status_code != 200 or r.json()["new"] != PER_BATCH:
                            problems.append(f"upsert b{b}: {r.status_code} {r.text[:300]}")
                        committed.add(b)
                    time.sleep(0.05)  # let searches interleave between batches too
        except Exception as exc:  # surfaced through `problems`, not lost in the thread
            with guard:
                problems.append(f"writer: {exc!r}")
        finally:
            writer_done.set()

    def searcher(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with srv.client() as c:
                for _ in range(400):  # bounded even if the writer hangs
                    if writer_done.is_set() or time.monotonic() - started > DEADLINE_S:
                        break
                    b = rng.randrange(BATCHES)
                    with guard:
                        was_committed = b in committed
                    found: list[tuple[str, httpx.Response]] = [
                        ("keyword", c.post("/search", json={
                            "query": f"zebrab{b}", "collection": "docs", "mode": "keyword",
                            "k": 50})),
                    ]
                    if rng.random() < 0.3:  # dense and hybrid narrowed by the batch filter
                        mode = rng.choice(["dense", "hybrid"])
                        found.append((mode, c.post("/search", json={
                            "query": f"zebrab{b}", "collection": "docs", "mode": mode,
                            "k": 50, "filter": {"batch": f"b{b}"}})))
                    local: list[str] = []
                    counts = [_check(kind, b, r, local, was_committed) for kind, r in found]
                    with guard:
                        problems.extend(local)
                        seen_counts.extend(counts)
                        searches[0] += len(found)
        except Exception as exc:
            with guard:
                problems.append(f"searcher {seed}: {exc!r}")

    threads = [threading.Thread(target=searcher, args=(s,), daemon=True)
               for s in range(SEARCHERS)]
    threads.append(threading.Thread(target=writer, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE_S + 5 - (time.monotonic() - started))
    assert not any(t.is_alive() for t in threads), "threads still running past the deadline"
    assert writer_done.is_set()
    assert not problems, "\n".join(problems[:20])
    # The race was real: searches ran while batches landed, and saw both outcomes.
    assert searches[0] >= 20, searches[0]
    assert PER_BATCH in seen_counts, "no search ever saw a committed batch"

    with srv.client() as c:  # afterwards every batch is visible, whole
        for b in range(BATCHES):
            r = c.post("/search", json={"query": f"zebrab{b}", "collection": "docs",
                                        "mode": "keyword", "k": 50})
            local: list[str] = []
            assert _check("final", b, r, local) == PER_BATCH, local
    # Upserts through this one process keep its indexes current: no search paid for a full
    # rebuild (only the empty collection's first open builds them, at generation 0).
    rebuilds = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert all(m.endswith("at generation 0") for m in rebuilds), rebuilds
