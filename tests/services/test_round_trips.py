"""A search resolves its collection once: one alias lookup, one read of the collection row,
one choice of embedder, whatever the mode (the renovation's promise: fewer store round
trips than the four ``get_collection`` and three ``embedder_for`` a search used to make).
Runs on the fake embedder: this is about the store, not the model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semsearch.config import Settings
from semsearch.core.types import Document, Mode
from semsearch.runtime.engine import Engine
from semsearch.services.ingest import index_documents
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine


class CountingStore:
    """Every store call passes through and is counted by method name."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_engine(Settings(home=tmp_path / "home", embedder="fake"))
    try:
        index_documents(eng, "notes", [
            Document(f"n{i}", f"note {i} about kites, wind and {w}", metadata={"i": i})
            for i, w in enumerate(["rain", "sun", "snow", "fog", "hail"])])
        yield eng
    finally:
        eng.close()


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("filtered", [False, True])
def test_a_search_reads_its_collection_once(engine: Engine, mode: Mode,
                                            filtered: bool) -> None:
    search(engine, "notes", SearchRequest("kites", mode=mode))  # indexes open and fresh
    counting = CountingStore(engine.store)
    engine.store = counting  # type: ignore[assignment]
    chosen: Counter[str] = Counter()
    embedder_for = engine.embedder_for

    def counted_embedder_for(info: Any) -> Any:
        chosen["embedder_for"] += 1
        return embedder_for(info)

    engine.embedder_for = counted_embedder_for  # type: ignore[method-assign]
    req = SearchRequest("kites in the rain", mode=mode,
                        filter=_filter(filtered))
    hits = search(engine, "notes", req).hits
    assert hits and hits[0].doc_id == "n0"
    calls = counting.calls
    assert calls["resolve"] == 1 and calls["get_collection"] == 1, calls
    assert chosen["embedder_for"] == 1
    # Then only what the answer needs: candidates' documents, the hits' chunks, a filter.
    assert calls["doc_ids_by_label"] == 1 and calls["chunks_by_label"] == 1, calls
    assert calls["labels_matching"] == (1 if filtered else 0)
    assert sum(calls.values()) == 4 + filtered, calls


def _filter(on: bool) -> Any:
    from semsearch.core.filters import parse_filter

    return parse_filter({"i": {"lte": 3}} if on else None)
