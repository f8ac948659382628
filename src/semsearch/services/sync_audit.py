"""Audit: compare a collection with its source without writing, and say how they differ.

A sync can only be trusted if someone can check it. The audit reads the whole source, hashes
every row the way sync does, and reports rows missing from the collection, rows whose
indexed content is stale, documents the source no longer holds (hard deletes, soft-deleted
rows still indexed), and derived indexes that disagree with the canonical store.
``repair`` runs a full reconciling sync and rebuilds the derived indexes if they drifted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from semsearch.core.sources import SourceSpec
from semsearch.core.types import Document
from semsearch.errors import InputError
from semsearch.ports import CollectionInfo, SourceRow, SyncSource
from semsearch.runtime.engine import Engine
from semsearch.runtime.writer import validate_document
from semsearch.services.sync import SyncReport, collection_lock, sync

EXAMPLES = 10


@dataclass
class AuditReport:
    collection: str
    source: str
    source_rows: int = 0
    source_live: int = 0
    indexed_documents: int = 0
    missing: int = 0
    stale: int = 0
    extra: int = 0
    deleted_still_indexed: int = 0
    rejected: int = 0
    index_chunks: int = 0
    vector_entries: int = 0
    keyword_entries: int = 0
    derived_in_step: bool = True
    examples: dict[str, list[str]] = field(default_factory=dict)
    repaired: SyncReport | None = None
    rebuilt_indexes: bool = False

    @property
    def drift(self) -> bool:
        return bool(self.missing or self.stale or self.extra or self.deleted_still_indexed
                    or not self.derived_in_step)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drift"] = self.drift
        out["repaired"] = self.repaired.to_dict() if self.repaired else None
        return out


def _example(report: AuditReport, kind: str, doc_id: str) -> None:
    ids = report.examples.setdefault(kind, [])
    if len(ids) < EXAMPLES:
        ids.append(doc_id)


def audit(engine: Engine, source: SyncSource, spec: SourceSpec, *, repair: bool = False,
          on_progress: Callable[[int], None] | None = None) -> AuditReport:
    handle = engine.collection(spec.collection)
    coll, info = handle.version, handle.info
    report = AuditReport(collection=spec.collection, source=source.name)
    with collection_lock(engine, spec.collection):
        source.check()
        stored_ids = set(engine.store.all_doc_ids(coll))
        live: set[str] = set()
        for rows in source.rows(None, spec.batch_size):
            report.source_rows += len(rows)
            docs = _indexable(engine, rows, stored_ids, live, report)
            stored = engine.store.content_hashes(coll, list(docs))
            for doc_id, doc in docs.items():
                if doc_id not in stored:
                    report.missing += 1
                    _example(report, "missing", doc_id)
                elif stored[doc_id] != doc.content_hash():
                    report.stale += 1
                    _example(report, "stale", doc_id)
            if on_progress is not None:
                on_progress(len(rows))
        report.source_live = len(live)
        report.indexed_documents = len(stored_ids)
        for doc_id in sorted(stored_ids - live):
            report.extra += 1
            _example(report, "extra", doc_id)
        _check_derived(engine, info, report)
    if repair and report.drift:
        _repair(engine, source, spec, report)
    return report


def _indexable(engine: Engine, rows: Sequence[SourceRow], stored_ids: set[str],
               live: set[str], report: AuditReport) -> dict[str, Document]:
    """The rows a sync would index, by id; soft-deleted and refused ones are counted."""
    docs: dict[str, Document] = {}
    for row in rows:
        doc = row.document
        if row.deleted:
            if doc.id in stored_ids:
                report.deleted_still_indexed += 1
                _example(report, "deleted_still_indexed", doc.id)
            continue
        live.add(doc.id)
        problem = row.problem
        if problem is None:
            try:
                validate_document(doc, engine.settings.max_text_chars)
            except InputError as exc:
                problem = str(exc)
        if problem is not None:
            report.rejected += 1
            continue
        docs[doc.id] = doc
    return docs


def _check_derived(engine: Engine, info: CollectionInfo, report: AuditReport) -> None:
    report.index_chunks = info.chunks
    idx = engine.indexes(info)  # as this process holds it: no catch-up, no rebuild
    report.vector_entries = len(idx.vectors)
    report.keyword_entries = len(idx.keyword)
    report.derived_in_step = (idx.is_saved(info.generation) or idx.is_fresh(
        info.generation)) and report.vector_entries == info.chunks \
        and report.keyword_entries == info.chunks


def _repair(engine: Engine, source: SyncSource, spec: SourceSpec, report: AuditReport) -> None:
    if report.missing or report.stale or report.extra or report.deleted_still_indexed:
        report.repaired = sync(engine, source, spec, full=True)
    if not report.derived_in_step:
        handle = engine.collection(spec.collection)
        info = handle.info
        idx = handle.indexes()  # rebuilds when the generation is behind
        if len(idx.vectors) != info.chunks or len(idx.keyword) != info.chunks:
            with idx.rw.write():  # same generation, wrong contents: damaged files
                idx.rebuild(engine.store, handle.embedder, info.generation)
        report.rebuilt_indexes = True
