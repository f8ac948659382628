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
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from semsearch.core.chunking import ChunkerConfig, chunk_document
from semsearch.core.metering import latency_histogram, percentiles
from semsearch.core.types import Document, InputType
from semsearch.errors import BusyError, InputError, SemsearchError
from semsearch.ports import DocumentWrite, LedgerUpdate, SourceRow, SyncSource, Vectors
from semsearch.services.embedding import EmbedStats
from semsearch.services.indexes import CollectionIndexes, doc_vector, split_vectors
from semsearch.services.ingest import ensure_collection, validate_document, validate_name
from semsearch.services.sync_config import SourceSpec
from semsearch.wiring import Engine

MAX_REASONS = 20
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


class Failpoints:
    """Crash injection for the kill -9 tests: ``SEMSEARCH_FAILPOINTS=name=N,...`` sends
    SIGKILL to this process the N-th time ``name`` is reached. Parsed per run, so it holds
    no state beyond the run that reads it."""

    def __init__(self, spec: str | None) -> None:
        self._at: dict[str, int] = {}
        for part in (spec or "").split(","):
            if "=" in part:
                name, n = part.split("=", 1)
                self._at[name.strip()] = int(n)
        self._hits: dict[str, int] = {}

    def hit(self, name: str) -> None:
        if name not in self._at:
            return
        self._hits[name] = self._hits.get(name, 0) + 1
        if self._hits[name] == self._at[name]:
            os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def collection_lock(engine: Engine, collection: str) -> Iterator[None]:
    """One sync (or repair) per collection at a time, across processes. The kernel drops
    the lock with the process, so a killed run never leaves a stale lock behind."""
    path = engine.settings.home / "locks" / f"{collection}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise BusyError(f"collection {collection!r} is already being synced ({holder}); "
                            "this run did nothing") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since "
                 f"{datetime.now(UTC).isoformat(timespec='seconds')}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


@dataclass
class _Batch:
    writes: list[DocumentWrite]
    vectors: Vectors | None
    deletes: list[str]
    rejected: dict[str, str]
    gone: list[str]


class _Run:
    """One sync run's state; ``sync`` below is the entry point."""

    def __init__(self, engine: Engine, source: SyncSource, spec: SourceSpec,
                 report: SyncReport, fail: Failpoints) -> None:
        self.engine = engine
        self.source = source
        self.spec = spec
        self.report = report
        self.fail = fail
        self.stats = EmbedStats()
        self.info = ensure_collection(engine, spec.collection)
        self.coll = self.info.name  # the version the collection's name points at
        self.embedder = engine.embedder_for(self.info)
        self.cfg = ChunkerConfig.from_dict(dict(self.info.chunker))
        self.idx: CollectionIndexes = engine.fresh_indexes(self.coll)
        self.generation = self.info.generation
        self.live: set[str] = set()

    # -- per batch -----------------------------------------------------------------------
    def prepare(self, rows: Sequence[SourceRow]) -> _Batch:
        coll = self.coll
        r = self.report
        latest: dict[str, SourceRow] = {}
        for row in rows:  # one id twice in a batch (a query with a join): the last wins
            latest[row.document.id or f"\0{id(row)}"] = row
        r.rows_seen += len(rows)
        rejected: dict[str, str] = {}
        gone: list[str] = []
        candidates: list[Document] = []
        deleted_ids: list[str] = []
        for row in latest.values():
            doc = row.document
            if row.deleted:
                deleted_ids.append(doc.id)
                continue
            if row.unchanged:
                self.live.add(doc.id)
                r.unchanged += 1
                continue
            problem = row.problem
            if problem is None:
                try:
                    validate_document(doc, self.engine.settings.max_text_chars)
                except InputError as exc:
                    problem = str(exc)
            if not doc.id:
                self._reject(rejected, f"<row {r.rows_seen}>", problem or "no id")
                continue
            self.live.add(doc.id)
            if problem is not None:
                self._reject(rejected, doc.id, problem)
                continue
            candidates.append(doc)
        present = self.engine.store.content_hashes(
            coll, [d.id for d in candidates] + deleted_ids + list(rejected))
        deletes = [i for i in deleted_ids if i in present]
        gone = [i for i in deleted_ids if i not in present]
        hashes = {d.id: d.content_hash() for d in candidates}
        todo = [d for d in candidates if present.get(d.id) != hashes[d.id]]
        r.unchanged += len(candidates) - len(todo)
        r.deleted += len(deletes)
        writes, vectors = self._embed(todo, hashes, rejected)
        r.changed += sum(1 for w in writes if w.document.id in present)
        r.new += sum(1 for w in writes if w.document.id not in present)
        # A row refused now but indexed before keeps its old version out of the index:
        # the source no longer holds that content.
        deletes += [i for i in rejected if i in present]
        return _Batch(writes, vectors, deletes, rejected, gone)

    def _reject(self, rejected: dict[str, str], doc_id: str, reason: str) -> None:
        rejected[doc_id] = reason
        self.report.rejected += 1
        if len(self.report.rejected_reasons) < MAX_REASONS:
            self.report.rejected_reasons[doc_id] = reason

    def _embed(self, docs: list[Document], hashes: Mapping[str, str],
               rejected: dict[str, str]) -> tuple[list[DocumentWrite], Vectors | None]:
        if not docs:
            return [], None
        tokenizer = self.embedder.embedder.tokenizer
        chunk_lists = [chunk_document(d, tokenizer, self.cfg) for d in docs]
        texts = [c.embed_text for cl in chunk_lists for c in cl]
        try:
            vectors = self.embedder.embed(texts, InputType.PASSAGE, self.stats)
        except InputError:
            if len(docs) == 1:
                raise
            return self._embed_one_by_one(docs, hashes, rejected)
        per_doc = split_vectors(vectors, [len(cl) for cl in chunk_lists])
        writes = [DocumentWrite(d, hashes[d.id], cl, doc_vector(v))
                  for d, cl, v in zip(docs, chunk_lists, per_doc, strict=True)]
        return writes, vectors

    def _embed_one_by_one(self, docs: list[Document], hashes: Mapping[str, str],
                          rejected: dict[str, str]) -> tuple[list[DocumentWrite], Vectors | None]:
        """The model refused the batch: find the rows it refuses and keep the rest."""
        import numpy as np

        writes: list[DocumentWrite] = []
        parts: list[Vectors] = []
        for d in docs:
            try:
                w, v = self._embed([d], hashes, rejected)
            except InputError as exc:
                self._reject(rejected, d.id, f"the embedder refused it: {exc}")
                continue
            writes += w
            if v is not None:
                parts.append(v)
        return writes, (np.concatenate(parts) if parts else None)

    def commit(self, batch: _Batch, position: Mapping[str, Any] | None,
               spec: Mapping[str, Any] | None) -> None:
        import numpy as np

        ledger = LedgerUpdate(source=self.source.name, spec=spec, position=position,
                              rejected=batch.rejected, gone=batch.gone)
        self.fail.hit("before_commit")
        with self.idx.rw.write():  # searches see the batch whole or not at all
            result = self.engine.store.write(self.coll, batch.writes, batch.deletes, ledger)
            self.fail.hit("after_commit")
            if result.generation != self.generation:
                vectors = batch.vectors if batch.vectors is not None \
                    else np.zeros((0, 0), dtype=np.float32)
                try:
                    self.idx.apply(result, vectors)
                except BaseException:
                    self.engine.forget_indexes(self.coll)
                    raise
        self.generation = result.generation
        self.report.chunks_written += len(result.added)
        self.report.batches += 1
        if position is not None:
            self.report.watermark = position
        self.fail.hit("after_batch")

    def save_indexes(self) -> None:
        idx = self.idx
        if self.engine.has_indexes(self.coll) and idx.is_fresh(self.generation) \
                and not idx.is_saved(self.generation):
            self.fail.hit("before_save")
            idx.save(self.generation)


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
    fail = Failpoints(os.environ.get("SEMSEARCH_FAILPOINTS"))
    with collection_lock(engine, coll):
        store = engine.store
        run: _Run | None = None
        # Recorded before the source is first touched, so a run that fails anywhere (the
        # source's check, count, newest row or any page) is on record as failed.
        store.mark_interrupted(coll, RUN_KIND)
        run_id = report.run_id = store.start_run(coll, RUN_KIND, started_at)
        try:
            source.check()
            phys = engine.resolve(coll)
            state = store.sync_state(phys)  # None for a new collection (drop clears it)
            if state is not None and state.source != source.name:
                raise InputError(
                    f"collection {coll!r} is synced from {state.source}; refusing to sync it "
                    f"from {source.name} (its reconciliation would delete the other source's "
                    "documents). Sync into another collection, or drop this one first.")
            run = _Run(engine, source, spec, report, fail)
            # A watermark (or, for files, the last read's stamps) unless told to read all.
            since = state.position if state is not None and not full else None
            report.watermark = since if source.incremental else None
            head = source.head() if source.incremental and since is None else None
            if on_total is not None:
                on_total(source.count(since if source.incremental else None))
            public = spec.public()
            for batch_rows in source.rows(since, spec.batch_size):
                batch = run.prepare(batch_rows)
                position = None
                if since is not None and source.incremental:
                    position = batch_rows[-1].position
                run.commit(batch, position, public)
                if on_progress is not None:
                    on_progress(len(batch_rows))
            # The read is complete: only now can absence mean deletion, and only now can a
            # first/full read's watermark (taken before it started) be recorded.
            deletes: list[str] = []
            if report.mode == "full":
                deletes = [i for i in store.all_doc_ids(run.coll) if i not in run.live]
                stale_rejects = [i for i in store.rejects(run.coll) if i not in run.live]
            else:
                stale_rejects = []
            final_pos = head if head is not None else (
                source.head() if not source.incremental else None)
            if deletes or stale_rejects or final_pos is not None or report.batches == 0:
                for part in _chunks(deletes, 500) if deletes else [[]]:
                    run.report.deleted += len(part)
                    run.commit(_Batch([], None, part, {}, stale_rejects), final_pos, public)
            if final_pos is not None and source.incremental:
                report.watermark = final_pos
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
                _fill(report, run.stats)
            report.seconds = round(time.perf_counter() - started, 3)
            store.finish_run(run_id, report.status, report.to_dict() | {
                "latency_histogram": latency_histogram(
                    run.stats.latencies_ms if run is not None else [])})
    return report


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _fill(report: SyncReport, stats: EmbedStats) -> None:
    lat = percentiles(stats.latencies_ms)
    report.model_calls = stats.provider_calls
    report.embedded = stats.embedded
    report.tokens = stats.tokens
    report.cost = round(stats.cost, 9)
    report.saved_cost = round(stats.saved_cost, 9)
    report.cache_hits = stats.cache_hits
    report.cache_misses = stats.cache_misses
    report.cache_errors = stats.cache_errors
    report.embed_p50_ms = lat["p50"]
    report.embed_p95_ms = lat["p95"]
