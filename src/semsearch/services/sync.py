"""Incremental sync: make a collection converge to a source's exact current state.

Each batch of source rows becomes one canonical-store transaction holding the batch's
documents, chunks, deletions, refused rows and the watermark after the batch, so a crash
anywhere loses at most the batch in flight and a rerun resumes where the last commit left
off. Vector and keyword indexes are derived: they are saved with the store generation they
reflect and rebuilt from the store (vectors from the embedding cache) when a crash left them
behind. Reconciliation (``full``) reads the whole source and deletes what it no longer holds;
it is the only way hard deletes can be seen, so an incremental run never deletes by absence.

Failure modes handled here rather than in callers: a row that cannot be indexed (NULL or
oversized text, or refused by the model) is recorded with its reason and skipped; the source
going away or failing a statement ends the run with an error, recorded as a failed run, and
everything committed so far kept; a second run on the same collection is refused by a lock."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from semsearch.core.metering import latency_histogram, percentiles
from semsearch.core.sources import SourceSpec
from semsearch.core.types import Document
from semsearch.errors import InputError, SemsearchError
from semsearch.ports import LedgerUpdate, SourceRow, SyncSource
from semsearch.runtime.engine import Engine
from semsearch.runtime.naming import validate_name
from semsearch.runtime.writer import Batch, BatchWriter, Failpoints, WriteCounts

RUN_KIND = "sync"


@dataclass
class SyncReport:
    collection: str
    source: str
    mode: str
    status: str = "running"
    rows_seen: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    rejected: int = 0
    chunks_written: int = 0
    model_calls: int = 0
    embedded: int = 0
    tokens: int = 0
    cost: float = 0.0
    saved_cost: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_errors: int = 0
    embed_p50_ms: float = 0.0
    embed_p95_ms: float = 0.0
    seconds: float = 0.0
    watermark: Mapping[str, Any] | None = None
    batches: int = 0
    rejected_reasons: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    run_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def json_line(self) -> str:
        return json.dumps({"event": "sync_run", **self.to_dict()}, ensure_ascii=False,
                          default=str)

    def fill(self, counts: WriteCounts, unchanged_rows: int) -> None:
        """Copy the run's counters in: the write path's and the embedder's."""
        for name in ("new", "changed", "deleted", "rejected", "batches"):
            setattr(self, name, getattr(counts, name))
        self.unchanged = counts.unchanged + unchanged_rows
        self.chunks_written = counts.chunks
        self.rejected_reasons = dict(counts.reasons)
        e = counts.embed
        lat = percentiles(e.latencies_ms)
        self.model_calls, self.embedded, self.tokens = e.provider_calls, e.embedded, e.tokens
        self.cost, self.saved_cost = round(e.cost, 9), round(e.saved_cost, 9)
        self.cache_hits, self.cache_misses = e.cache_hits, e.cache_misses
        self.cache_errors = e.cache_errors
        self.embed_p50_ms, self.embed_p95_ms = lat["p50"], lat["p95"]


def stored_spec(engine: Engine, collection: str) -> Mapping[str, Any] | None:
    """The settings the collection was last synced with (never a password), or None."""
    state = engine.store.sync_state(engine.resolve(collection))
    return None if state is None else state.spec


def collection_lock(engine: Engine, collection: str) -> contextlib.AbstractContextManager[None]:
    """One sync, re-index or swap per collection at a time, across processes; a second is
    refused with BusyError naming the holder."""
    return engine.locks.hold(collection)


class _Run:
    """One sync run's state; ``sync`` below is the entry point. Rows become batches of the
    one write path: soft-deleted rows are deletes, rows the source cannot give (NULL text)
    are refusals, and the ledger (watermark, refusals) rides in each batch's transaction."""

    def __init__(self, engine: Engine, source: SyncSource, spec: SourceSpec,
                 report: SyncReport, fail: Failpoints) -> None:
        self.source = source
        self.report = report
        self.store = engine.store
        self.batch_size = spec.batch_size
        self.spec_public = spec.public()
        self.counts = WriteCounts()
        handle = engine.collection(spec.collection, create=True)
        self.coll = handle.version  # the version the collection's name points at
        self.writer = BatchWriter(handle, self.counts, invalid="reject", refused="reject",
                                  remove_rejected=True, failpoints=fail)
        self.live: set[str] = set()
        self.unchanged_rows = 0  # rows the source knows are as last read

    def batch(self, rows: Sequence[SourceRow]) -> Batch:
        latest: dict[str, SourceRow] = {}
        for row in rows:  # one id twice in a batch (a query with a join): the last wins
            latest[row.document.id or f"\0{id(row)}"] = row
        self.report.rows_seen += len(rows)
        upserts: list[Document] = []
        deletes: list[str] = []
        refused: dict[str, str] = {}
        for row in latest.values():
            doc = row.document
            if row.deleted:
                deletes.append(doc.id)
            elif row.unchanged:
                self.live.add(doc.id)
                self.unchanged_rows += 1
            elif not doc.id:
                refused[f"<row {self.report.rows_seen}>"] = row.problem or "no id"
            else:
                self.live.add(doc.id)
                if row.problem is not None:
                    refused[doc.id] = row.problem
                else:
                    upserts.append(doc)
        return Batch(upserts=upserts, deletes=deletes, refused=refused)

    def commit(self, batch: Batch, position: Mapping[str, Any] | None,
               spec: Mapping[str, Any] | None, gone: Sequence[str] = ()) -> None:
        with self.writer.span(batch):
            prepared = self.writer.prepare(batch)
            ledger = LedgerUpdate(source=self.source.name, spec=spec, position=position,
                                  rejected=prepared.rejected, gone=[*prepared.gone, *gone])
            self.writer.commit(prepared, ledger)
        if position is not None:
            self.report.watermark = position

    def save_indexes(self) -> None:
        self.writer.save()

    def read(self, since: Mapping[str, Any] | None,
             on_total: Callable[[int | None], None] | None,
             on_progress: Callable[[int], None] | None) -> None:
        """Read the source from ``since`` (None: everything), one committed batch per page,
        then reconcile and record where the next run starts."""
        source, report = self.source, self.report
        report.watermark = since if source.incremental else None
        head = source.head() if source.incremental and since is None else None
        if on_total is not None:
            on_total(source.count(since if source.incremental else None))
        public = self.spec_public
        for batch_rows in source.rows(since, self.batch_size):
            position = None
            if since is not None and source.incremental:
                position = batch_rows[-1].position
            self.commit(self.batch(batch_rows), position, public)
            if on_progress is not None:
                on_progress(len(batch_rows))
        self.finish(head)

    def finish(self, head: Mapping[str, Any] | None) -> None:
        """The read is complete: only now can absence mean deletion, and only now can a
        first/full read's watermark (taken before it started) be recorded."""
        store, report, source = self.store, self.report, self.source
        deletes: list[str] = []
        stale_rejects: list[str] = []
        if report.mode == "full":
            deletes = [i for i in store.all_doc_ids(self.coll) if i not in self.live]
            stale_rejects = [i for i in store.rejects(self.coll) if i not in self.live]
        final_pos = head if head is not None else (
            source.head() if not source.incremental else None)
        if deletes or stale_rejects or final_pos is not None or self.counts.batches == 0:
            for part in _chunks(deletes, 500) if deletes else [[]]:
                self.commit(Batch(deletes=part), final_pos, self.spec_public,
                            gone=stale_rejects)
        if final_pos is not None and source.incremental:
            report.watermark = final_pos


def sync(engine: Engine, source: SyncSource, spec: SourceSpec, *, full: bool = False,
         on_total: Callable[[int | None], None] | None = None,
         on_progress: Callable[[int], None] | None = None) -> SyncReport:
    """Run one sync of ``spec.collection`` from ``source``. Raises on failure after
    recording the run; what was committed before the failure stays."""
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    coll = spec.collection
    if "@" not in coll:  # before the name becomes a lock file's name
        validate_name(coll)
    report = SyncReport(collection=coll, source=source.name,
                        mode="full" if full or not source.incremental else "incremental")
    fail = Failpoints(engine.settings.failpoints)
    with collection_lock(engine, coll):
        store = engine.store
        run: _Run | None = None
        # Recorded before the source is first touched, so a run that fails anywhere (the
        # source's check, count, newest row or any page) is on record as failed.
        store.mark_interrupted(coll, RUN_KIND)
        run_id = report.run_id = store.start_run(coll, RUN_KIND, started_at)
        try:
            source.check()
            state = store.sync_state(engine.resolve(coll))  # None for a new collection
            if state is not None and state.source != source.name:
                raise InputError(
                    f"collection {coll!r} is synced from {state.source}; refusing to sync it "
                    f"from {source.name} (its reconciliation would delete the other source's "
                    "documents). Sync into another collection, or drop this one first.")
            run = _Run(engine, source, spec, report, fail)
            # A watermark (or, for files, the last read's stamps) unless told to read all.
            run.read(state.position if state is not None and not full else None,
                     on_total, on_progress)
            run.save_indexes()
            report.status = "ok"
        except BaseException as exc:
            report.status = "failed"
            report.error = str(exc) if isinstance(exc, SemsearchError) else \
                f"{type(exc).__name__}: {exc}"
            if run is not None:
                # Keep the derived indexes of what was committed; if that fails too, they
                # are rebuilt from the store on the next open.
                with contextlib.suppress(Exception):
                    run.save_indexes()
            raise
        finally:
            if run is not None:
                report.fill(run.counts, run.unchanged_rows)
            report.seconds = round(time.perf_counter() - started, 3)
            store.finish_run(run_id, report.status, report.to_dict() | {
                "latency_histogram": latency_histogram(
                    run.counts.embed.latencies_ms if run is not None else [])})
    return report


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
