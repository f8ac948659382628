"""`index_documents` plans the next batch (validate, diff, chunk) on a second thread while
the current one is embedded, and still counts, writes and fails exactly as one batch after
another would: an id repeated in the next batch is diffed after the batch before it is
written, and a bad source line comes after what was read before it is written."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from semsearch.config import Settings
from semsearch.core.types import Document, InputType
from semsearch.errors import SourceError
from semsearch.ports import Vectors
from semsearch.runtime import writer as writer_module
from semsearch.runtime.engine import Engine
from semsearch.services.ingest import index_documents
from semsearch.wiring import open_engine


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[Engine]:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER", "fake")
    eng = open_engine(Settings())
    try:
        yield eng
    finally:
        eng.close()


def _docs(n: int, word: str = "kites") -> list[Document]:
    return [Document(f"d{i}", f"document {i} about {word} and the wind, " * 5) for i in range(n)]


def test_chunking_of_the_next_batch_overlaps_the_model(engine: Engine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str, float, float]] = []  # (what, thread, start, end)
    inner = engine.embedder.embedder
    real_embed = inner.embed

    def slow_embed(texts: Sequence[str], input_type: InputType) -> Vectors:
        t = time.monotonic()
        time.sleep(0.05)  # a model call long enough to be seen
        out = real_embed(texts, input_type)
        events.append(("embed", threading.current_thread().name, t, time.monotonic()))
        return out

    real_chunk = writer_module.chunk_document

    def timed_chunk(*args: Any, **kw: Any) -> Any:
        t = time.monotonic()
        out = real_chunk(*args, **kw)
        events.append(("chunk", threading.current_thread().name, t, time.monotonic()))
        return out

    monkeypatch.setattr(inner, "embed", slow_embed)
    monkeypatch.setattr(writer_module, "chunk_document", timed_chunk)
    report = index_documents(engine, "p", _docs(40), batch_size=8)
    assert (report.documents, report.new, report.chunks > 0) == (40, 40, True)
    chunks = [e for e in events if e[0] == "chunk"]
    embeds = [e for e in events if e[0] == "embed"]
    assert len(embeds) == 5
    assert {e[1] for e in chunks} == {"semsearch-plan_0"}  # off the writing thread
    overlapping = [c for c in chunks if any(m[2] < c[2] < m[3] for m in embeds)]
    assert len(overlapping) >= 8  # at least a batch's worth chunked during a model call


def test_an_id_repeated_in_the_next_batch_counts_as_serial_writes_would(
        engine: Engine) -> None:
    a1, a2 = Document("a", "first text about kites"), Document("a", "second text about tides")
    same = Document("b", "a text that does not change")
    report = index_documents(engine, "p", [a1, a2, same, same], batch_size=1)
    # a: new, then changed; b: new, then unchanged - diffed after the write before it
    assert (report.new, report.changed, report.unchanged) == (2, 1, 1)
    assert engine.store.content_hashes("p", ["a"])["a"] == a2.content_hash()


def test_a_bad_source_line_fails_after_the_batch_before_it_is_written(engine: Engine) -> None:
    def source() -> Iterator[Document]:
        yield from _docs(4)
        raise SourceError("corpus.jsonl:5: not JSON")

    with pytest.raises(SourceError, match=r"corpus\.jsonl:5"):
        index_documents(engine, "p", source(), batch_size=2)
    assert sorted(engine.store.all_doc_ids("p")) == ["d0", "d1", "d2", "d3"]
