"""The one write path. Every writer (``semsearch index``, sync, the API's upsert and delete,
a re-index and its catch-up) takes its batches through ``BatchWriter``:

    validate -> hash diff -> chunk -> embed (through the cache) -> one store transaction
    -> apply to the derived indexes -> (at the end) save them

so the rules live in one place: an unchanged document (same content hash) never reaches
the model; each batch is one canonical-store transaction, seen whole or not at all by
searches; derived indexes follow the store's generation and are rebuilt from it when a
crash leaves them behind; and every refused document is counted with its reason in one
``WriteCounts``."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from semsearch.core.chunking import chunk_document
from semsearch.core.types import Chunk, Document, InputType
from semsearch.core.unicode import require_unicode, shown
from semsearch.errors import InputError
from semsearch.ports import ChunkPayload, DocumentWrite, LedgerUpdate, Span, Vectors, WriteResult
from semsearch.runtime.collection import Collection
from semsearch.runtime.embedding import EmbedStats
from semsearch.runtime.indexes import doc_vector, split_vectors

MAX_REASONS = 20  # refused and repeated ids kept with their reasons, per run
BULK_CHUNKS = 1000  # a run that wrote this many chunks refreshes a shared index's statistics


def validate_document(doc: Document, max_chars: int) -> None:
    if not isinstance(doc.id, str) or not doc.id.strip():
        raise InputError("a document has an empty id")
    name = f"document {shown(doc.id)!r}"
    require_unicode(doc.id, f"{name}: its id")
    require_unicode(doc.title, f"{name}: its title")
    require_unicode(doc.text, f"{name}: its text")
    require_unicode(json.dumps(dict(doc.metadata), ensure_ascii=False, default=str),
                    f"{name}: its metadata")
    if not doc.text.strip() and not doc.title.strip():
        raise InputError(f"document {doc.id!r} has no text and no title")
    if len(doc.text) > max_chars:
        raise InputError(f"document {doc.id!r} has {len(doc.text):,} characters; the limit is "
                         f"{max_chars:,} (SEMSEARCH_MAX_TEXT_CHARS)")


@dataclass
class WriteCounts:
    """What a run's writes did, for every writer alike."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    rejected: int = 0  # invalid, refused by the source or by the model
    duplicates: int = 0  # documents whose id came earlier in the run (the last copy wins)
    chunks: int = 0  # chunks written
    batches: int = 0  # store transactions that changed something or moved the ledger
    reasons: dict[str, str] = field(default_factory=dict)  # the first MAX_REASONS refusals
    duplicate_ids: list[str] = field(default_factory=list)  # the first MAX_REASONS
    embed: EmbedStats = field(default_factory=EmbedStats)

    def reject(self, key: str, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons[key] = reason

    def repeated(self, doc_id: str) -> None:
        self.duplicates += 1
        if len(self.duplicate_ids) < MAX_REASONS and doc_id not in self.duplicate_ids:
            self.duplicate_ids.append(doc_id)


@dataclass(frozen=True)
class Batch:
    """One batch of changes. ``refused`` are ids the caller already knows cannot be indexed
    (a NULL text in a source row), with the reason."""

    upserts: Sequence[Document] = ()
    deletes: Sequence[str] = ()
    refused: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Planned:
    """A batch validated, diffed against the store and chunked (``BatchWriter.plan``)."""

    todo: list[Document]  # new or changed: to embed
    chunks: list[list[Chunk]]  # todo's chunks, in order
    hashes: dict[str, str]
    present: dict[str, str]  # id -> content hash already stored
    deletes: list[str]
    rejected: dict[str, str]
    rejects: list[tuple[str, str]]  # to count, in order
    gone: list[str]
    unchanged: int

    def ids(self) -> set[str]:
        """Every id whose stored state this plan read."""
        return set(self.hashes) | set(self.deletes) | set(self.gone) | set(self.rejected)


@dataclass
class Prepared:
    writes: list[DocumentWrite]
    vectors: Vectors | None
    deletes: list[str]
    rejected: dict[str, str]  # id -> reason, for the sync ledger
    gone: list[str]  # deleted ids that were not in the collection (ledger: no longer refused)


class Failpoints:
    """Crash injection for the kill -9 tests: ``SEMSEARCH_FAILPOINTS=name=N,...`` sends
    SIGKILL to this process the N-th time ``name`` is reached. Parsed per writer, so it
    holds no state beyond the run that reads it."""

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


Policy = Literal["raise", "reject"]


class BatchWriter:
    """Writes batches into one collection version.

    ``invalid``: a document that fails validation raises InputError ("raise", strict
    indexing) or is counted and left out ("reject"). ``refused``: when the model refuses a
    batch, raise, or find the documents it refuses one by one and keep the rest.
    ``remove_rejected``: a rejected document that is in the collection is removed (a sync
    mirrors a source that no longer holds indexable content for it)."""

    def __init__(self, handle: Collection, counts: WriteCounts | None = None, *,
                 invalid: Policy = "raise", refused: Policy = "raise",
                 remove_rejected: bool = False, failpoints: Failpoints | None = None) -> None:
        self.handle = handle
        self.counts = counts if counts is not None else WriteCounts()
        self._invalid = invalid
        self._refused = refused
        self._remove_rejected = remove_rejected
        self._fail = failpoints or Failpoints(None)
        self._engine = handle.engine
        self._store = handle.engine.store
        self._version = handle.version
        self._chunker = handle.chunker
        # (a version no embedder here serves is refused up front)
        model = handle.embedder.identity.model
        self.indexes = handle.indexes()
        self.generation = handle.info.generation
        self._tel = handle.engine.telemetry
        self._attrs = {"semsearch.collection": handle.name, "semsearch.version": self._version,
                       "semsearch.model": model}

    def span(self, batch: Batch | None = None) -> AbstractContextManager[Span]:
        """The span of one batch (prepare and commit): callers that run the two halves
        themselves (a sync, which builds its ledger between them) open it around both."""
        attrs: dict[str, str | int | float | bool] = dict(self._attrs)
        if batch is not None:
            attrs["semsearch.upserts"] = len(batch.upserts)
            attrs["semsearch.deletes"] = len(batch.deletes)
        return self._tel.span("semsearch.write_batch", attrs)

    # -- prepare: everything but the write --------------------------------------------------
    def plan(self, batch: Batch) -> Planned:
        """Validate, diff against the store and chunk: all of ``prepare`` but the model call,
        and no side effect (counts are applied by ``finish``), so an ingest can plan the
        next batch on another thread while this one is embedded."""
        for doc_id in batch.deletes:
            require_unicode(doc_id, f"document {shown(doc_id)!r}: its id")
        rejected = dict(batch.refused)
        rejects = list(batch.refused.items())
        candidates: list[Document] = []
        max_chars = self._engine.settings.max_text_chars
        for doc in batch.upserts:
            try:
                validate_document(doc, max_chars)
                refused = self.indexes.vectors.refusal(ChunkPayload(doc.id, doc.metadata))
                if refused is not None:
                    raise InputError(f"document {shown(doc.id)!r}: {refused}")
            except InputError as exc:
                if self._invalid == "raise":
                    raise
                key = shown(doc.id) if isinstance(doc.id, str) and doc.id.strip() \
                    else "<no id>"
                rejected[key] = str(exc)
                rejects.append((key, str(exc)))
                continue
            candidates.append(doc)
        present = self._store.content_hashes(
            self._version, [d.id for d in candidates] + list(batch.deletes) + list(rejected))
        deletes = [i for i in batch.deletes if i in present]
        gone = [i for i in batch.deletes if i not in present]
        hashes = {d.id: d.content_hash() for d in candidates}
        todo = [d for d in candidates if present.get(d.id) != hashes[d.id]]
        return Planned(todo, self._chunk(todo), hashes, present, deletes, rejected, rejects,
                       gone, unchanged=len(candidates) - len(todo))

    def finish(self, planned: Planned) -> Prepared:
        """Count what ``plan`` found and embed its chunks."""
        for key, reason in planned.rejects:
            self.counts.reject(key, reason)
        self.counts.unchanged += planned.unchanged
        self.counts.deleted += len(planned.deletes)
        rejected, present, deletes = planned.rejected, planned.present, list(planned.deletes)
        writes, vectors = self._embed(planned.todo, planned.hashes, rejected, planned.chunks)
        self.counts.changed += sum(1 for w in writes if w.document.id in present)
        self.counts.new += sum(1 for w in writes if w.document.id not in present)
        if self._remove_rejected:
            # Indexed before, refused now: the old content is no longer what the source
            # holds, so it leaves the index.
            deletes += [i for i in rejected if i in present and i not in deletes]
        return Prepared(writes, vectors, deletes, rejected, planned.gone)

    def prepare(self, batch: Batch) -> Prepared:
        return self.finish(self.plan(batch))

    def _chunk(self, docs: list[Document]) -> list[list[Chunk]]:
        if not docs:
            return []
        tokenizer = self.handle.embedder.tokenizer
        with self._tel.span("semsearch.chunk", {**self._attrs, "semsearch.documents": len(docs)}):
            return [chunk_document(d, tokenizer, self._chunker) for d in docs]

    def _embed(self, docs: list[Document], hashes: Mapping[str, str],
               rejected: dict[str, str], chunk_lists: list[list[Chunk]] | None = None,
               ) -> tuple[list[DocumentWrite], Vectors | None]:
        if not docs:
            return [], None
        embedder = self.handle.embedder
        if chunk_lists is None:
            chunk_lists = self._chunk(docs)
        texts = [c.embed_text for cl in chunk_lists for c in cl]
        try:
            with self._tel.span("semsearch.embed", {**self._attrs, "semsearch.texts": len(texts)}):
                vectors = embedder.embed(texts, InputType.PASSAGE, self.counts.embed)
        except InputError:
            if len(docs) == 1 or self._refused == "raise":
                raise
            return self._embed_one_by_one(docs, hashes, rejected)
        per_doc = split_vectors(vectors, [len(cl) for cl in chunk_lists])
        writes = [DocumentWrite(d, hashes[d.id], cl, doc_vector(v))
                  for d, cl, v in zip(docs, chunk_lists, per_doc, strict=True)]
        return writes, vectors

    def _embed_one_by_one(self, docs: list[Document], hashes: Mapping[str, str],
                          rejected: dict[str, str]) -> tuple[list[DocumentWrite], Vectors | None]:
        """The model refused the batch: find the documents it refuses and keep the rest."""
        writes: list[DocumentWrite] = []
        parts: list[Vectors] = []
        for d in docs:
            try:
                w, v = self._embed([d], hashes, rejected)
            except InputError as exc:
                reason = f"the embedder refused it: {exc}"
                rejected[d.id] = reason
                self.counts.reject(d.id, reason)
                continue
            writes += w
            if v is not None:
                parts.append(v)
        return writes, (np.concatenate(parts) if parts else None)

    # -- commit: one store transaction, then the derived indexes --------------------------
    def commit(self, prepared: Prepared, ledger: LedgerUpdate | None = None) -> WriteResult:
        self._fail.hit("before_commit")
        idx = self.indexes
        # Searches see the batch whole or not at all; shared indexes apply in commit order.
        with idx.rw.write(), idx.writing():
            with self._tel.span("semsearch.store_write", self._attrs):
                result = self._store.write(self._version, prepared.writes, prepared.deletes,
                                           ledger)
            self._fail.hit("after_commit")
            if result.generation != self.generation:
                vectors = prepared.vectors if prepared.vectors is not None \
                    else np.zeros((0, 0), dtype=np.float32)
                try:
                    with self._tel.span("semsearch.index_apply", {
                            **self._attrs, "semsearch.chunks_added": len(result.added),
                            "semsearch.chunks_removed": len(result.removed)}):
                        idx.apply(result, vectors, {w.document.id: w.document.metadata
                                                    for w in prepared.writes})
                except BaseException:
                    # Half-applied: drop it; the next open sees the gap and rebuilds.
                    self._engine.forget_indexes(self._version)
                    raise
        self.generation = result.generation
        self.counts.chunks += len(result.added)
        if result.added or result.removed or ledger is not None:
            self.counts.batches += 1
        self._fail.hit("after_batch")
        return result

    def write(self, batch: Batch, ledger: LedgerUpdate | None = None) -> WriteResult:
        with self.span(batch):
            return self.commit(self.prepare(batch), ledger)

    def save(self) -> None:
        """Persist the derived indexes if they reflect the last commit and are not saved
        yet. Runs end with it, failed ones too (what was committed stays findable)."""
        idx = self.indexes
        if not (self._engine.has_indexes(self._version) and idx.is_fresh(self.generation)):
            return
        saved = idx.is_saved(self.generation)
        if not saved or idx.durable:
            self._fail.hit("before_save")
        if not saved:
            idx.save(self.generation)
        elif idx.durable and self.counts.chunks >= BULK_CHUNKS:
            idx.save(self.generation)  # a shared index: fresh statistics after a bulk load
