"""The seams between the core and its backends.

Every backend (embedder, cache, canonical store, vector index, keyword index) implements one
of these small Protocols; ``wiring`` is the only module that knows the concrete classes, so a
PostgreSQL store, a Redis cache or an HTTP embedder slots in without touching the services.
Vector and keyword indexes address chunks by an integer *label* the canonical store assigns,
so derived indexes can always be rebuilt from it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

# The chunker (core) defines what it needs of a tokenizer; re-exported for backends.
from semsearch.core.chunking import Tokenizer as Tokenizer
from semsearch.core.filters import Filter
from semsearch.core.metering import ProviderMeter
from semsearch.core.types import (
    ChatMessage,
    Chunk,
    Completion,
    Document,
    EmbedderIdentity,
    InputType,
)

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Embeds a batch. Implementations batch internally (callers pass any size), declare
    what changes their vector space in ``identity``, and record every model/API call in
    ``meter`` (calls, items, tokens, latency) so runs can be metered and priced. One that
    embeds queries and passages alike may say so with a class attribute ``symmetric =
    True`` (optional; read with getattr): a batcher then gives both kinds one call."""

    meter: ProviderMeter

    @property
    def identity(self) -> EmbedderIdentity: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    def embed(self, texts: Sequence[str], input_type: InputType) -> Vectors: ...


class EmbeddingCache(Protocol):
    """Vectors by opaque key (see ``core.cache_keys``). One round trip per call."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]: ...

    def put_many(self, items: Mapping[str, Vectors]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    identity: EmbedderIdentity
    chunker: Mapping[str, Any]
    documents: int
    chunks: int
    generation: int
    created_at: str


@dataclass(frozen=True)
class StoredChunk:
    label: int
    chunk: Chunk
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class DocumentWrite:
    """One document with its chunks and their vectors, written atomically."""

    document: Document
    content_hash: str
    chunks: Sequence[Chunk]
    doc_vector: Vectors


@dataclass(frozen=True)
class WriteResult:
    """Labels the store assigned to new chunks and freed from replaced/deleted ones."""

    added: Sequence[tuple[int, Chunk]]
    removed: Sequence[int]
    generation: int


@dataclass(frozen=True)
class LedgerUpdate:
    """What a sync batch records beside its documents, in the same transaction: where the
    source was read up to (``position``, opaque to the store), which rows were refused and
    why, and which earlier refusals are gone from the source."""

    source: str
    spec: Mapping[str, Any] | None = None
    position: Mapping[str, Any] | None = None
    rejected: Mapping[str, str] = field(default_factory=dict)
    gone: Sequence[str] = ()
    # Change events: the version each id's applied event carried (upserts, deletes, and
    # unchanged upserts alike). The store refuses the whole batch with StaleWriteError if
    # any id already holds this version or a newer one, so two consumers cannot apply an
    # older event over a newer one; the versions of deletes stay as tombstones.
    versions: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncState:
    source: str
    spec: Mapping[str, Any]
    position: Mapping[str, Any] | None
    updated_at: str


class CollectionCatalog(Protocol):
    """Collections, their stamped identity and generation, and the names (aliases) that point
    at one version each. Swaps are compare-and-swap so two cannot interleave."""

    def create_collection(self, name: str, identity: EmbedderIdentity,
                          chunker: Mapping[str, Any]) -> CollectionInfo: ...

    def get_collection(self, name: str) -> CollectionInfo: ...

    def list_collections(self) -> list[CollectionInfo]: ...

    def drop_collection(self, name: str) -> None: ...

    def resolve(self, name: str) -> str: ...

    def get_alias(self, alias: str) -> tuple[str, list[str]] | None: ...

    def list_aliases(self) -> dict[str, tuple[str, list[str]]]: ...

    def set_alias(self, alias: str, target: str, expected: str, history: Sequence[str],
                  carry_sync_state: bool = True) -> None: ...

    def drop_alias(self, alias: str) -> None: ...


class DocumentStore(Protocol):
    """Documents, metadata, content hashes and chunks of one collection at a time. ``write``
    is the one atomic write: a batch of documents with their chunks, deletions, and (for a
    sync) the ledger entries describing the batch, in one transaction."""

    def content_hashes(self, collection: str, doc_ids: Sequence[str]) -> dict[str, str]: ...

    def write(self, collection: str, writes: Sequence[DocumentWrite],
              deletes: Sequence[str] = (), ledger: LedgerUpdate | None = None) -> WriteResult: ...

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any]: ...

    def all_doc_ids(self, collection: str) -> list[str]: ...

    def iter_documents(self, collection: str, batch: int = 500) -> Iterator[list[Document]]: ...

    def chunks_by_label(self, collection: str, labels: Sequence[int]) -> dict[int, StoredChunk]: ...

    def doc_ids_by_label(self, collection: str, labels: Sequence[int]) -> dict[int, str]: ...

    def iter_chunks(self, collection: str, batch: int = 1000) -> Iterator[list[StoredChunk]]: ...

    def doc_vectors(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Vectors]:
        """The vector stored with each document that exists (the renormalized mean of its
        chunk vectors, ``runtime.indexes.doc_vector``, written in the same transaction as
        its chunks): similar items, recommendations and deduplication read these, so they
        never call the model nor depend on the embedding cache still holding the chunks."""
        ...

    def labels_matching(self, collection: str, filt: Filter) -> set[int]: ...


class SyncLedger(Protocol):
    """Where a collection's sync stands: its source binding, watermark and refused rows
    (written by ``DocumentStore.write`` with the batch they describe)."""

    def sync_state(self, collection: str) -> SyncState | None: ...

    def rejects(self, collection: str) -> dict[str, str]: ...

    def event_versions(self, collection: str, doc_ids: Sequence[str]) -> dict[str, int]:
        """The last applied change-event version of each id that has one (deleted ids
        included: a tombstone keeps a late, older upsert out)."""
        ...


class RunLog(Protocol):
    """History of index and sync runs: what each did and cost. Survives collection drops."""

    def record_run(self, collection: str, kind: str, started_at: str, status: str,
                   stats: Mapping[str, Any]) -> int: ...

    def start_run(self, collection: str, kind: str, started_at: str) -> int: ...

    def finish_run(self, run_id: int, status: str, stats: Mapping[str, Any]) -> None: ...

    def mark_interrupted(self, collection: str, kind: str) -> int: ...

    def list_runs(self, collection: str | None = None,
                  limit: int = 1000) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class SettingsRevision:
    """One revision of a collection name's search defaults (``semsearch tune``): what was
    stored, why (``note``: who tuned it, on what, with what score), and whether it has been
    reverted since. The live revision is the newest one not reverted."""

    collection: str
    revision: int
    settings: Mapping[str, Any]
    note: Mapping[str, Any]
    created_at: str
    reverted_at: str | None = None


class SearchSettingsLog(Protocol):
    """Search defaults per collection name, as revisions that are kept: a new one is
    appended, a revert marks the live one reverted (the one before it is live again, or
    none: the built-in defaults)."""

    def search_settings(self, collection: str) -> list[SettingsRevision]:
        """Every revision of ``collection``'s defaults, oldest first ([] if never tuned)."""
        ...

    def add_search_settings(self, collection: str, settings: Mapping[str, Any],
                            note: Mapping[str, Any]) -> SettingsRevision: ...

    def revert_search_settings(self, collection: str) -> SettingsRevision | None:
        """Mark the live revision reverted and return the one live now (None: the built-in
        defaults); ``InputError`` if none is live (nothing to revert)."""
        ...


class ArtifactStore(Protocol):
    """Small binary artifacts by content-addressed key (a collection's query adapter:
    ``core.adapter``), in the canonical store so every process and replica serving a
    collection finds what its stamped identity names. A key's bytes never change: putting
    a key again with the same bytes is a no-op."""

    def put_artifact(self, key: str, data: bytes) -> None: ...

    def get_artifact(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None."""
        ...


class Store(CollectionCatalog, DocumentStore, SyncLedger, RunLog, SearchSettingsLog,
            ArtifactStore, Protocol):
    """The canonical store: every role above, over one database, plus its upkeep."""

    def disk_usage(self) -> dict[str, int]: ...

    def vacuum(self) -> None: ...

    def ping(self) -> bool:
        """Whether the store answers now: cheap, never raises (what /readyz asks)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ChunkPayload:
    """What a vector index that filters by itself keeps beside a chunk's vector."""

    doc_id: str
    metadata: Mapping[str, Any]


class VectorIndex(Protocol):
    """Derived dense index over chunk vectors of one collection. Inner product on unit
    vectors (cosine). ``generation`` ties the saved files to a canonical-store state.

    Filters reach an index in one of two ways: as the ``allowed`` labels the store found, or,
    for an index that keeps each chunk's metadata (``filters`` is True: a vector database),
    as the filter itself (``where``), so a narrow filter on a huge collection never ships
    millions of labels. An index with ``filters`` False refuses ``where``."""

    filters: bool

    @property
    def generation(self) -> int: ...

    @property
    def missing(self) -> bool:
        """The index should exist but is gone from a server that holds it (a wiped Milvus):
        rebuilding is an operator's decision, not a search's. Indexes kept in files or in
        the store's own database are recreated where they are opened: always False."""
        ...

    def refusal(self, payload: ChunkPayload) -> str | None:
        """Why this index cannot hold a document's payload (a size limit of its server), or
        None. Asked before the store commits, so such a document is rejected as invalid
        input instead of being stored with no vectors."""
        ...

    def __len__(self) -> int: ...

    def add(self, labels: Sequence[int], vectors: Vectors,
            payloads: Sequence[ChunkPayload] | None = None) -> None: ...

    def remove(self, labels: Iterable[int]) -> None: ...

    def search(self, query: Vectors, k: int, allowed: set[int] | None = None,
               where: Filter | None = None) -> list[tuple[int, float]]: ...

    def save(self, generation: int) -> None: ...

    def stamp(self, generation: int) -> None:
        """Record that the contents reflect ``generation`` (a write-through index, after
        each batch); an index that persists only on ``save`` saves."""
        ...

    def clear(self) -> None: ...

    @property
    def deleted(self) -> int: ...

    def disk_bytes(self) -> int: ...

    def compact(self) -> None: ...


# What a keyword index holds per chunk: (label, text) or (label, text, title). The title is
# a field of its own that a search can weight; unweighted, the two count as one text.
KeywordItem = tuple[int, str] | tuple[int, str, str]


class KeywordIndex(Protocol):
    """Derived BM25 index over chunk texts of one collection, with the title as a second
    field. ``title_weight`` multiplies a title's term frequencies before BM25 saturation
    (BM25F-style; lengths are not weighted): None or 1.0 ranks as if title and text were
    one text."""

    @property
    def generation(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, items: Sequence[KeywordItem]) -> None: ...

    def remove(self, labels: Iterable[int]) -> None: ...

    def search(self, query: str, k: int, allowed: set[int] | None = None,
               title_weight: float | None = None) -> list[tuple[int, float]]: ...

    def save(self, generation: int) -> None: ...

    def stamp(self, generation: int) -> None:
        """Record that the contents reflect ``generation`` (a write-through index, after
        each batch); an index that persists only on ``save`` saves."""
        ...

    def clear(self) -> None: ...

    def disk_bytes(self) -> int: ...

    def compact(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceRow:
    """One record read from a sync source. ``problem`` says why it cannot be indexed (NULL
    text, say) so the run records and skips it; ``position`` is where the source would
    resume after this row, opaque to everyone but the source."""

    document: Document
    deleted: bool = False
    problem: str | None = None
    position: Mapping[str, Any] | None = None
    unchanged: bool = False  # the source knows it is as last read (same file mtime and size)


class SyncSource(Protocol):
    """A system of record read in a stable order. ``incremental`` sources resume from a
    position (watermark); the others are read whole every run and reconciled."""

    @property
    def name(self) -> str: ...

    @property
    def incremental(self) -> bool: ...

    def check(self) -> None: ...

    def count(self, since: Mapping[str, Any] | None) -> int | None: ...

    def rows(self, since: Mapping[str, Any] | None,
             batch_size: int) -> Iterator[list[SourceRow]]: ...

    def head(self) -> Mapping[str, Any] | None: ...

    def close(self) -> None: ...


class IndexStorage(Protocol):
    """Where a collection version's derived indexes live (files under the home, or tables
    in a shared database): opened, measured and removed by collection name, so the runtime
    never knows paths. ``shared`` says the indexes are one durable copy for every process,
    written through at each batch, not a copy in each process saved at the end of a run."""

    shared: bool

    def open(self, collection: str, dimension: int) -> tuple[VectorIndex, KeywordIndex]: ...

    def lock(self, collection: str) -> AbstractContextManager[None]:
        """Held by whoever saves or rebuilds the collection's indexes, across processes."""
        ...

    def exists(self, collection: str) -> bool: ...

    def disk_bytes(self, collection: str) -> int: ...

    def remove(self, collection: str) -> None: ...

    def point(self, alias: str, collection: str) -> None:
        """Mirror a name's move to a version (swap, rollback, activate) where the indexes
        have names of their own that other tools read (a Milvus alias); else nothing."""
        ...

    def unpoint(self, alias: str) -> None:
        """Forget the mirrored name (the collection was dropped)."""
        ...

    def ping(self) -> bool:
        """Whether the indexes' server answers now (cheap, never raises; /readyz asks)."""
        ...

    def close(self) -> None: ...


class CollectionLocks(Protocol):
    """One writer run (sync, re-index, swap) per collection at a time, across processes. A
    killed holder must never leave the lock behind."""

    def hold(self, collection: str) -> AbstractContextManager[None]:
        """Raises ``BusyError`` (naming the holder) when another run holds it."""
        ...


class KeyStorage(Protocol):
    """Where the API's hashed keys live: a JSON file in the home, or a table in the shared
    database so a key created on one machine is accepted by servers on every other.
    Entries are ``{"name", "sha256", "scopes"}``; validating them is the caller's job."""

    @property
    def where(self) -> str:
        """For messages: 'file /path/api_keys.json', 'table semsearch_api_keys at ...'."""
        ...

    # True when ``version`` only looks at this machine (a file's stat), so a server may call
    # it on its event loop; False when it may wait on a network (a database).
    local: bool

    def version(self) -> object:
        """Cheap, and different whenever the keys changed: checked on every request."""
        ...

    def load(self) -> list[dict[str, Any]]:
        """Every entry; raises InputError when the storage cannot be read or parsed."""
        ...

    def upsert(self, entry: Mapping[str, Any]) -> None: ...

    def delete(self, name: str) -> bool:
        """False when there was no key ``name``."""
        ...

    def close(self) -> None: ...


class EmbedderFactory(Protocol):
    """Builds embedders other than the configured one: the one that made a stamped
    identity (to serve a collection built with another local model), or a named model (to
    re-index with)."""

    def for_identity(self, identity: EmbedderIdentity) -> Embedder | None: ...

    def for_model(self, model: str) -> Embedder: ...


# -- telemetry ------------------------------------------------------------------------------
AttributeValue = str | int | float | bool
Attributes = Mapping[str, AttributeValue]


@dataclass(frozen=True)
class Delivery:
    """One message as a broker handed it over: its body, and what the broker needs to
    acknowledge or dead-letter it (``token``, opaque to the core)."""

    body: bytes
    token: Any
    redelivered: bool = False


class EventSource(Protocol):
    """A subscription that change events arrive on: a RabbitMQ queue, a NATS JetStream
    durable consumer, a Redis Streams consumer group. Delivery is at least once: whatever
    is not acknowledged comes back (to this consumer after a reconnect, or to another one),
    which the consumer makes harmless with versions. Several processes on the same
    subscription share its messages (competing consumers). Connection loss is raised as
    ``BrokerUnavailableError`` from any method; ``reconnect`` is then called with backoff."""

    @property
    def name(self) -> str:
        """Where the events come from, for reports and logs (never a password)."""
        ...

    def receive(self, max_items: int, timeout: float) -> list[Delivery]:
        """Up to ``max_items`` deliveries: waits at most ``timeout`` seconds for the first,
        then returns what is already there without waiting more ([] on timeout)."""
        ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settle deliveries for good (after their batch is committed, or dead-lettered)."""
        ...

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Put the message with its reason on the dead-letter destination, durably, before
        it is acknowledged (the caller acks it afterwards)."""
        ...

    def lag(self) -> int | None:
        """Messages waiting for this subscription, where the broker tells; else None."""
        ...

    def reconnect(self) -> None:
        """Open a new connection after a loss (raises BrokerUnavailableError if it cannot);
        deliveries of the old one are not acknowledged and come back."""
        ...

    def close(self) -> None: ...


class Span(Protocol):
    """An open span: attributes learned after it started (hit counts, the model once the
    collection is resolved) are added here."""

    def set(self, attributes: Attributes) -> None: ...


class Telemetry(Protocol):
    """Traces and metrics of the steps a search or a write takes. The engine's default is
    ``NoTelemetry``, which does nothing and imports nothing; wiring puts an exporter (OTLP)
    here only when one is configured. A span opened on one thread is the parent of spans
    opened under it on that thread, and on a thread the work was handed to with
    ``contextvars.copy_context().run``."""

    def span(self, name: str,
             attributes: Attributes | None = None) -> AbstractContextManager[Span]: ...

    def add(self, name: str, value: float, attributes: Attributes | None = None, *,
            unit: str = "1", description: str = "") -> None:
        """Add to a monotonic counter (tokens, cost, cache hits, a run's rows)."""
        ...

    def observe(self, name: str, value: float, attributes: Attributes | None = None, *,
                unit: str = "s", description: str = "") -> None:
        """Record one value in a histogram (a latency)."""
        ...

    def shutdown(self) -> None:
        """Flush what is buffered and stop; called once, when the engine closes."""
        ...


class _NoSpan:
    def set(self, attributes: Attributes) -> None:
        pass

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class NoTelemetry:
    """The default: every call returns at once (one shared span object, no allocation
    beyond the caller's arguments), so the default path costs nothing measurable."""

    def span(self, name: str, attributes: Attributes | None = None) -> _NoSpan:
        return _NO_SPAN

    def add(self, name: str, value: float, attributes: Attributes | None = None, *,
            unit: str = "1", description: str = "") -> None:
        pass

    def observe(self, name: str, value: float, attributes: Attributes | None = None, *,
                unit: str = "s", description: str = "") -> None:
        pass

    def shutdown(self) -> None:
        pass


class ChatModel(Protocol):
    """A chat-completions LLM. ``stream`` yields text deltas and ends with one
    ``Completion`` (the whole text and usage); ``complete`` returns only that. Calls are
    metered in ``meter`` like an embedder's (calls, tokens, latency, retries, errors)."""

    meter: ProviderMeter

    @property
    def identity(self) -> Mapping[str, str]: ...

    @property
    def context_window(self) -> int: ...

    def complete(self, messages: Sequence[ChatMessage], max_tokens: int) -> Completion: ...

    def stream(self, messages: Sequence[ChatMessage],
               max_tokens: int) -> Iterator[str | Completion]: ...

    def close(self) -> None: ...


class Reranker(Protocol):
    """Scores candidates against a query after retrieval: a cross-encoder behind an HTTP
    ``/rerank`` API (TEI, Infinity, Cohere, Jina) or a stronger local bi-encoder. ``rerank``
    returns one score per text, in the order given, higher meaning more relevant; scores
    are comparable within one call only."""

    @property
    def identity(self) -> Mapping[str, str]: ...

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]: ...

    def close(self) -> None: ...


class Corpora(Protocol):
    """Documents and labelled queries read from a path (a BEIR folder, a folder of files, a
    .jsonl or .csv file)."""

    def documents(self, path: Path) -> Iterator[Document]: ...

    def count(self, path: Path) -> int | None: ...

    def queries(self, path: Path, split: str) -> dict[str, str]: ...

    def qrels(self, path: Path, split: str) -> dict[str, dict[str, int]]: ...
