"""Indexing: documents -> chunks -> vectors (through the cache) -> store -> derived indexes.

Work is done in batches of documents; each batch is one store transaction, so an error in
the corpus stops the run with everything before it committed and nothing half-written.
Unchanged documents (same content hash) are skipped without touching the model or cache."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from semsearch.core.chunking import ChunkerConfig, chunk_document
from semsearch.core.metering import latency_histogram
from semsearch.core.types import Document, InputType
from semsearch.errors import InputError
from semsearch.ports import CollectionInfo, DocumentWrite
from semsearch.services.embedding import EmbedStats
from semsearch.services.indexes import doc_vector, split_vectors
from semsearch.wiring import Engine


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


MAX_REASONS = 20


def ensure_collection(engine: Engine, name: str) -> CollectionInfo:
    """Open the collection (the version its name points at), creating it stamped with the
    configured embedder and chunker."""
    return _open_or_create(engine, name)[0]


def _open_or_create(engine: Engine, name: str) -> tuple[CollectionInfo, bool]:
    """The collection and whether this call created it."""
    from semsearch.errors import NotFoundError

    if "@" not in name:  # name@vN: a version made by reindex, never created here
        validate_name(name)
    name = engine.resolve(name)
    try:
        info = engine.store.get_collection(name)
    except NotFoundError:
        validate_name(name)
        s = engine.settings
        identity = engine.embedder.embedder.identity
        # Chunks must fit the model's window (128 tokens for paraphrase-MiniLM-L3-v2), or
        # the model silently cuts every chunk's tail.
        size = min(s.chunk_max_tokens, identity.max_tokens)
        overlap = s.chunk_overlap_tokens if size == s.chunk_max_tokens \
            else min(s.chunk_overlap_tokens, size // 4)
        cfg = ChunkerConfig(max_tokens=size, overlap_tokens=overlap, strategy=s.chunk_strategy)
        return engine.store.create_collection(name, identity, cfg.to_dict()), True
    engine.check_identity(info)
    return info, False


def validate_name(name: str) -> None:
    """Names start with a letter or digit: one starting with '-' reads as an option on
    every command line (``-c``), one starting with '.' hides its index folder."""
    ok = bool(name) and len(name) <= 64 and name[0].isalnum() and \
        all(c.isalnum() or c in "-_." for c in name)
    if not ok:
        raise InputError(f"collection name {name!r} must be 1-64 letters, digits, '-', '_' "
                         "or '.', starting with a letter or digit")


def _batches(docs: Iterable[Document], size: int,
             report: IndexReport) -> Iterator[list[Document]]:
    """Batches of distinct ids. An id seen before in this run is counted and reported, and
    its last copy is the one kept (within a batch it replaces the earlier copy; across
    batches it is written again over it)."""
    seen: set[str] = set()
    batch: dict[str, Document] = {}
    for doc in docs:
        if doc.id in seen:
            report.duplicates += 1
            if len(report.duplicate_ids) < MAX_REASONS and doc.id not in report.duplicate_ids:
                report.duplicate_ids.append(doc.id)
        seen.add(doc.id)
        batch[doc.id] = doc
        if len(batch) >= size:
            yield list(batch.values())
            batch = {}
    if batch:
        yield list(batch.values())


def validate_document(doc: Document, max_chars: int) -> None:
    if not isinstance(doc.id, str) or not doc.id.strip():
        raise InputError("a document has an empty id")
    if not doc.text.strip() and not doc.title.strip():
        raise InputError(f"document {doc.id!r} has no text and no title")
    if len(doc.text) > max_chars:
        raise InputError(f"document {doc.id!r} has {len(doc.text):,} characters; the limit is "
                         f"{max_chars:,} (SEMSEARCH_MAX_TEXT_CHARS)")


def index_documents(engine: Engine, collection: str, docs: Iterable[Document], *,
                    batch_size: int = 256, skip_invalid: bool = False,
                    on_progress: Callable[[int], None] | None = None) -> IndexReport:
    """Index ``docs``. An invalid document (no text, too long) raises InputError, or, with
    ``skip_invalid``, is left out and counted with its reason (real corpora such as
    Cranfield contain empty records; one should not sink a 100k-document import)."""
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    info, created = _open_or_create(engine, collection)
    logical, collection = collection, info.name
    cfg = ChunkerConfig.from_dict(dict(info.chunker))
    idx = engine.fresh_indexes(collection)
    embedder = engine.embedder_for(info)
    tokenizer = embedder.embedder.tokenizer
    report = IndexReport(collection=collection)
    stats = EmbedStats()
    generation = info.generation
    done = 0
    try:
        for batch in _batches(docs, batch_size, report):
            report.documents += len(batch)
            valid = []
            for doc in batch:
                try:
                    validate_document(doc, engine.settings.max_text_chars)
                    valid.append(doc)
                except InputError as exc:
                    if not skip_invalid:
                        raise
                    report.skipped += 1
                    if len(report.skipped_reasons) < MAX_REASONS:
                        report.skipped_reasons.append(str(exc))
            batch = valid
            hashes = {d.id: d.content_hash() for d in batch}
            stored = engine.store.content_hashes(collection, list(hashes))
            todo = [d for d in batch if stored.get(d.id) != hashes[d.id]]
            report.unchanged += len(batch) - len(todo)
            report.changed += sum(1 for d in todo if d.id in stored)
            report.new += sum(1 for d in todo if d.id not in stored)
            if todo:
                chunk_lists = [chunk_document(d, tokenizer, cfg) for d in todo]
                texts = [c.embed_text for cl in chunk_lists for c in cl]
                vectors = embedder.embed(texts, InputType.PASSAGE, stats)
                per_doc = split_vectors(vectors, [len(cl) for cl in chunk_lists])
                writes = [DocumentWrite(d, hashes[d.id], cl, doc_vector(v))
                          for d, cl, v in zip(todo, chunk_lists, per_doc, strict=True)]
                with idx.rw.write():  # searches see the batch whole or not at all
                    result = engine.store.write(collection, writes)
                    try:
                        idx.apply(result, vectors)
                    except BaseException:
                        # Half-applied: drop it; the next open sees the gap and rebuilds.
                        engine.forget_indexes(collection)
                        raise
                generation = result.generation
                report.chunks += len(texts)
            if on_progress is not None:
                on_progress(report.documents - done)
                done = report.documents
    except BaseException as exc:
        report.status = f"failed: {exc}"[:500]
        if created and generation == info.generation:
            # Nothing was written: a missing path or an unreadable first file must not
            # leave an empty collection behind.
            from semsearch.services.collections import drop_collection

            with contextlib.suppress(Exception):
                drop_collection(engine, collection)
        raise
    finally:
        # Save what was committed, even when the corpus failed part-way.
        if engine.has_indexes(collection) and idx.is_fresh(generation) \
                and not idx.is_saved(generation):
            idx.save(generation)
        _fill(report, stats)
        report.seconds = round(time.perf_counter() - started, 3)
        engine.store.record_run(logical, "index", started_at,
                                "ok" if report.status == "ok" else "failed", report.to_dict()
                                | {"latency_histogram": latency_histogram(stats.latencies_ms)})
    return report


def _fill(report: IndexReport, stats: EmbedStats) -> None:
    report.embedded = stats.embedded
    report.cache_hits = stats.cache_hits
    report.cache_misses = stats.cache_misses
    report.model_calls = stats.provider_calls
    report.tokens = stats.tokens
    report.truncated = stats.truncated
    report.retries = stats.retries
    report.cost = round(stats.cost, 9)
    report.saved_cost = round(stats.saved_cost, 9)
    report.provider_latency_ms = stats.latency()
    report.embed_seconds = round(stats.seconds, 3)
    report.cache_errors = stats.cache_errors


def delete_documents(engine: Engine, collection: str, doc_ids: list[str]) -> int:
    collection = engine.resolve(collection)
    engine.store.get_collection(collection)
    idx = engine.fresh_indexes(collection)
    present = set(engine.store.content_hashes(collection, doc_ids))
    if not present:
        return 0
    import numpy as np

    with idx.rw.write():
        result = engine.store.write(collection, [], deletes=sorted(present))
        idx.apply(result, np.zeros((0, 0), dtype=np.float32))
    if idx.is_fresh(result.generation):
        idx.save(result.generation)
    return len(present)
