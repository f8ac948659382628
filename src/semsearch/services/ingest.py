"""Indexing documents into a collection, and deleting them: the ``index`` use case.

Documents go through the one write path (``runtime.writer``) in batches; each batch is one
store transaction, so an error in the corpus stops the run with everything before it
committed and nothing half-written. Unchanged documents (same content hash) are skipped
without touching the model or cache. A run that fails before writing anything into a
collection it created removes that collection again."""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semsearch.core.metering import latency_histogram
from semsearch.core.types import Document
from semsearch.ports import CollectionInfo
from semsearch.runtime.engine import Engine
from semsearch.runtime.naming import validate_name as validate_name
from semsearch.runtime.writer import Batch, BatchWriter, Failpoints, Planned, WriteCounts
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


class _Ahead:
    """One batch whose plan (validate, diff, chunk) runs on the planner thread while the
    batch before it is written. Its span opens when the plan starts, in a context of its
    own, so the plan's spans and the write's (on this thread, later) share the batch's
    span as parent."""

    def __init__(self, writer: BatchWriter, docs: list[Document],
                 planner: ThreadPoolExecutor) -> None:
        self.writer, self.batch = writer, Batch(upserts=docs)
        self.before: set[str] = set()  # ids the previous batch writes: a plan reading them
        self._ctx = contextvars.copy_context()
        self._span = writer.span(self.batch)
        self._ctx.run(self._span.__enter__)
        self._open = True
        self._future: Future[Planned] = planner.submit(self._ctx.run, writer.plan, self.batch)

    def write(self) -> None:
        """Finish and commit the batch (planning it again if its plan read ids the batch
        before it wrote: that read came before the write)."""
        try:
            planned = self._future.result()
            self._ctx.run(self._write, planned)
        except BaseException as exc:
            self.close(exc)
            raise
        self.close()

    def _write(self, planned: Planned) -> None:
        if planned.ids() & self.before:
            planned = self.writer.plan(self.batch)
        self.writer.commit(self.writer.finish(planned))

    def close(self, exc: BaseException | None = None) -> None:
        """End the batch's span (once; an abandoned plan is waited for first)."""
        if self._open:
            self._open = False
            with contextlib.suppress(BaseException):
                self._future.exception()  # the plan no longer runs in the context
            self._ctx.run(self._span.__exit__, type(exc) if exc else None, exc,
                          exc.__traceback__ if exc else None)


def _planned_ahead(writer: BatchWriter, batches: Iterable[list[Document]]) -> Iterator[_Ahead]:
    """The batches, each one's plan started on a second thread while the one before it is
    embedded and committed: chunking and tokenizing overlap the model (which releases the
    GIL) instead of running between its calls. A plan reads the store before the previous
    commit, so when the two batches share an id it is planned again after it. The source is
    read one batch ahead too; its error comes after the batch before it is written."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="semsearch-plan") as planner:
        previous: _Ahead | None = None
        source = iter(batches)
        try:
            while True:
                try:
                    docs = next(source)
                except StopIteration:
                    break
                except BaseException:  # a bad source line: what came before is written first
                    if previous is not None:
                        ready, previous = previous, None
                        yield ready
                    raise
                ahead = _Ahead(writer, docs, planner)
                if previous is not None:
                    ahead.before = {d.id for d in previous.batch.upserts}
                    ready, previous = previous, ahead
                    yield ready
                else:
                    previous = ahead
            if previous is not None:
                ready, previous = previous, None
                yield ready
        finally:
            if previous is not None:  # the run stopped before this batch's turn
                previous.close()


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
        for ahead in _planned_ahead(writer, _batches(docs, batch_size, counts)):
            report.documents += len(ahead.batch.upserts)
            ahead.write()
            if on_progress is not None:
                on_progress(len(ahead.batch.upserts))
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
