"""Indexing documents into a collection, and deleting them: the ``index`` use case.

Documents go through the one write path (``runtime.writer``) in batches; each batch is one
store transaction, so an error in the corpus stops the run with everything before it
committed and nothing half-written. Unchanged documents (same content hash) are skipped
without touching the model or cache. A run that fails before writing anything into a
collection it created removes that collection again."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semsearch.core.metering import latency_histogram
from semsearch.core.types import Document
from semsearch.ports import CollectionInfo
from semsearch.runtime.engine import Engine
from semsearch.runtime.naming import validate_name as validate_name
from semsearch.runtime.writer import Batch, BatchWriter, Failpoints, WriteCounts
from semsearch.runtime.writer import validate_document as validate_document


@dataclass
class IndexReport:
    collection: str
    documents: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    chunks: int = 0
    embedded: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    model_calls: int = 0
    tokens: int = 0
    truncated: int = 0
    retries: int = 0
    cost: float = 0.0
    saved_cost: float = 0.0
    provider_latency_ms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    skipped: int = 0
    skipped_reasons: list[str] = field(default_factory=list)  # the first MAX_REASONS
    duplicates: int = 0  # documents whose id came earlier in the same run: the last wins
    duplicate_ids: list[str] = field(default_factory=list)  # the first MAX_REASONS
    cache_errors: int = 0  # cache calls that failed (Redis down or slow); embedding went on
    status: str = "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fill(self, counts: WriteCounts) -> None:
        """Copy a run's counters in: the write path's and the embedder's."""
        for name in ("new", "changed", "unchanged", "chunks", "duplicates"):
            setattr(self, name, getattr(counts, name))
        self.duplicate_ids = list(counts.duplicate_ids)
        self.skipped = counts.rejected
        self.skipped_reasons = list(counts.reasons.values())
        e = counts.embed
        self.embedded, self.cache_hits, self.cache_misses = e.embedded, e.cache_hits, \
            e.cache_misses
        self.model_calls, self.tokens, self.truncated, self.retries = e.provider_calls, \
            e.tokens, e.truncated, e.retries
        self.cost, self.saved_cost = round(e.cost, 9), round(e.saved_cost, 9)
        self.provider_latency_ms = e.latency()
        self.embed_seconds = round(e.seconds, 3)
        self.cache_errors = e.cache_errors


def ensure_collection(engine: Engine, name: str) -> CollectionInfo:
    """Open the collection (the version its name points at), creating it stamped with the
    configured embedder and chunker."""
    return engine.collection(name, create=True).info


def _batches(docs: Iterable[Document], size: int,
             counts: WriteCounts) -> Iterator[list[Document]]:
    """Batches of distinct ids. An id seen before in this run is counted and reported, and
    its last copy is the one kept (within a batch it replaces the earlier copy; across
    batches it is written again over it)."""
    seen: set[str] = set()
    batch: dict[str, Document] = {}
    for doc in docs:
        if doc.id in seen:
            counts.repeated(doc.id)
        seen.add(doc.id)
        batch[doc.id] = doc
        if len(batch) >= size:
            yield list(batch.values())
            batch = {}
    if batch:
        yield list(batch.values())


def index_documents(engine: Engine, collection: str, docs: Iterable[Document], *,
                    batch_size: int = 256, skip_invalid: bool = False, create: bool = True,
                    on_progress: Callable[[int], None] | None = None) -> IndexReport:
    """Index ``docs``. An invalid document (no text, too long) raises InputError, or, with
    ``skip_invalid``, is left out and counted with its reason (real corpora such as
    Cranfield contain empty records; one should not sink a 100k-document import).
    ``create=False`` refuses an unknown collection (NotFoundError) instead of making it."""
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    handle = engine.collection(collection, create=create)
    report = IndexReport(collection=handle.version)
    counts = WriteCounts()
    writer = BatchWriter(handle, counts, invalid="reject" if skip_invalid else "raise",
                         failpoints=Failpoints(engine.settings.failpoints))
    try:
        for batch in _batches(docs, batch_size, counts):
            report.documents += len(batch)
            writer.write(Batch(upserts=batch))
            if on_progress is not None:
                on_progress(len(batch))
    except BaseException as exc:
        report.status = f"failed: {exc}"[:500]
        if handle.created and writer.generation == handle.info.generation:
            # Nothing was written: a missing path or an unreadable first file must not
            # leave an empty collection behind.
            from semsearch.services.collections import drop_collection

            with contextlib.suppress(Exception):
                drop_collection(engine, handle.version)
        raise
    finally:
        try:
            # Save what was committed, even when the corpus failed part-way.
            writer.save()
        finally:
            report.fill(counts)
            report.seconds = round(time.perf_counter() - started, 3)
            engine.store.record_run(
                collection, "index", started_at, "ok" if report.status == "ok" else "failed",
                report.to_dict() | {"latency_histogram": latency_histogram(
                    counts.embed.latencies_ms)})
    return report


def index_path(engine: Engine, collection: str, source: Path, *, batch_size: int = 256,
               skip_invalid: bool = False,
               on_total: Callable[[int | None], None] | None = None,
               on_progress: Callable[[int], None] | None = None) -> IndexReport:
    """Index a BEIR folder, a folder of text files, or a .jsonl/.csv file."""
    if on_total is not None:
        on_total(engine.corpora.count(source))
    return index_documents(engine, collection, engine.corpora.documents(source),
                           batch_size=batch_size, skip_invalid=skip_invalid,
                           on_progress=on_progress)


def delete_documents(engine: Engine, collection: str, doc_ids: list[str]) -> int:
    handle = engine.collection(collection)
    writer = BatchWriter(handle)
    writer.write(Batch(deletes=list(dict.fromkeys(doc_ids))))
    writer.save()
    return writer.counts.deleted
