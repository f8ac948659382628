"""``VectorIndex`` over a Milvus collection: one Milvus collection per semsearch collection
version, with the chunk label as primary key, the vector (inner product, which on the unit
vectors semsearch stores is cosine, so scores equal the embedded backend's), the document id,
and the document's metadata as JSON, so filters are evaluated by Milvus itself
(``adapters.milvus.expressions``) instead of shipping label lists.

The collection is derived data: the store's generation it reflects is kept as a collection
property, written by ``stamp``/``save``. The first write or stamp creates the collection (a
rebuild's ``clear`` drops it). One that the store says should hold chunks but that Milvus
does not have is ``missing``, which the engine reports with the command that rebuilds it
rather than silently re-embedding a large corpus inside a search.

Consistency: a Strong read waits for Milvus's next time tick (about 200 ms with default
settings), too slow for every search. So the first read of an index object is Strong, and
later ones use Session consistency, which waits only for this process's own last write. A
write of another process is seen all the same: it moves the store's generation, and a
process that sees the generation move re-opens its indexes (a new object, a Strong read)
before it searches. Deletes are never served whatever Milvus returns: the search service
keeps only labels the store still holds."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

from semsearch.adapters.milvus.client import Milvus, aliases_of, milvus_name, pymilvus
from semsearch.adapters.milvus.expressions import label_expression, milvus_expression
from semsearch.adapters.vectors.checks import check_query, upsert_batch
from semsearch.core.filters import Filter
from semsearch.errors import BackendError, IndexMissingError, InputError
from semsearch.ports import ChunkPayload, Vectors

log = logging.getLogger("semsearch.milvus")
Hits = list[tuple[int, float]]
T = TypeVar("T")
GENERATION = "semsearch.generation"
MAX_TOP_K = 16384  # Milvus refuses a larger limit
_ALLOWED_PER_SEARCH = 8192  # labels per ``label in [...]`` expression
_ROWS_PER_WRITE = 512  # rows per upsert: well under gRPC's message limit with metadata
_DOC_ID_CHARS = 1000  # Milvus VARCHAR is bounded; the store holds the full id
MAX_METADATA_BYTES = 65536  # Milvus's limit on a JSON field (proxy refuses longer)


class MilvusVectorIndex:
    # Keeps each chunk's document metadata and evaluates filters itself (``where``).
    filters = True

    def __init__(self, milvus: Milvus, collection: str, dimension: int, *,
                 ef_search: int = 256, m: int = 16, ef_construction: int = 200,
                 alias: str | None = None) -> None:
        if dimension <= 0:
            raise InputError(f"vector dimension must be positive, got {dimension}")
        self._milvus = milvus
        self.collection = collection
        self.name = milvus_name(milvus.prefix, collection)
        self._dim = dimension
        self.ef_search = ef_search
        self._m = m
        self._ef_construction = ef_construction
        self._strong = True  # the next read waits for everything written before it
        self._alias = alias  # the Milvus alias made with the collection (a base version)
        self._col: Any = None  # pymilvus.Collection once known to exist
        self._restore: list[str] = []  # aliases to put back when the collection is re-made

    # -- the Milvus collection -------------------------------------------------------------

    def _existing(self) -> Any:
        """The pymilvus Collection, or None when Milvus has no such collection."""
        if self._col is not None:
            return self._col
        pm = pymilvus()

        def find(alias: str) -> Any:
            if not pm.utility.has_collection(self.name, using=alias,
                                             timeout=self._milvus.timeout):
                return None
            col = pm.Collection(self.name, using=alias, timeout=self._milvus.timeout)
            self._check_dimension(col)
            col.load(timeout=self._milvus.timeout)
            return col

        self._col = self._call(f"opening collection {self.name}", find)
        return self._col

    def _check_dimension(self, col: Any) -> None:
        for f in col.schema.fields:
            if f.name == "vector" and int(f.params.get("dim", self._dim)) != self._dim:
                raise InputError(
                    f"Milvus collection {self.name} holds {f.params.get('dim')}-dimensional "
                    f"vectors, not {self._dim}: rebuild it (semsearch rebuild -c "
                    f"{self.collection.split('@')[0]})")

    def _ensure(self) -> Any:
        col = self._existing()
        if col is None:
            col = self._create()
        return col

    def _create(self) -> Any:
        pm = pymilvus()
        fields = [
            pm.FieldSchema("label", pm.DataType.INT64, is_primary=True,
                           description="the chunk's label in the canonical store"),
            pm.FieldSchema("doc_id", pm.DataType.VARCHAR, max_length=4 * _DOC_ID_CHARS),
            pm.FieldSchema("metadata", pm.DataType.JSON),
            pm.FieldSchema("vector", pm.DataType.FLOAT_VECTOR, dim=self._dim),
        ]
        schema = pm.CollectionSchema(fields, description=f"semsearch {self.collection}")
        timeout = self._milvus.timeout

        def create(alias: str) -> Any:
            col = pm.Collection(self.name, schema, using=alias,
                                consistency_level="Session", timeout=timeout)
            col.create_index("vector", {"index_type": "HNSW", "metric_type": "IP", "params": {
                "M": self._m, "efConstruction": self._ef_construction}}, timeout=timeout)
            col.load(timeout=timeout)
            if self._alias is not None and not self._alias_taken(alias):
                pm.utility.create_alias(self.name, self._alias, using=alias, timeout=timeout)
            for name in self._restore:  # the aliases it had before a clear
                pm.utility.create_alias(self.name, name, using=alias, timeout=timeout)
            self._restore = []
            return col

        self._col = self._call(f"creating collection {self.name}", create)
        log.info("created Milvus collection %s for %r", self.name, self.collection)
        return self._col

    def _alias_taken(self, using: str) -> bool:
        pm = pymilvus()
        try:
            # resolves an alias to its collection
            pm.Collection(self._alias, using=using, timeout=self._milvus.timeout)
        except Exception:
            return False
        return True

    def _call(self, what: str, fn: Callable[[str], T]) -> T:
        try:
            return self._milvus.call(what, fn)
        except BackendError as exc:
            text = str(exc).lower()
            if "collection not found" in text or "can't find collection" in text:
                self._col = None
                raise IndexMissingError(
                    f"Milvus at {self._milvus.shown} has no collection {self.name} for "
                    f"{self.collection!r} (was Milvus wiped, or the collection dropped?); the "
                    f"store still holds its documents: run `semsearch rebuild -c "
                    f"{self.collection}` to re-create it") from None
            raise

    @property
    def missing(self) -> bool:
        """Milvus has no collection for this version (never written, or wiped)."""
        return self._existing() is None

    # -- VectorIndex -----------------------------------------------------------------------

    @property
    def generation(self) -> int:
        col = self._existing()
        if col is None:
            return -1
        info = self._call("reading the generation",
                          lambda a: col.describe(timeout=self._milvus.timeout))
        props = info.get("properties") or {}
        try:
            return int(props.get(GENERATION, -1))
        except (TypeError, ValueError):
            return -1

    def refusal(self, payload: ChunkPayload) -> str | None:
        return _too_large(len(_encode(payload.metadata)))

    def __len__(self) -> int:
        col = self._existing()
        if col is None:
            return 0
        level = self._level()
        rows = self._call("counting vectors", lambda a: col.query(
            "", output_fields=["count(*)"], consistency_level=level,
            timeout=self._milvus.timeout))
        self._strong = False
        return int(rows[0]["count(*)"]) if rows else 0

    def _level(self) -> str:
        return "Strong" if self._strong else "Session"

    def add(self, labels: Sequence[int], vectors: Vectors,
            payloads: Sequence[ChunkPayload] | None = None) -> None:
        """Insert or replace (upsert); within one batch the last duplicate of a label wins."""
        if payloads is not None and len(payloads) != len(labels):
            raise InputError(f"add: {len(labels)} labels but {len(payloads)} payloads")
        by_label = {int(lb): p for lb, p in zip(labels, payloads or (), strict=False)}
        batch = upsert_batch(labels, vectors, self._dim)
        if batch is None:
            return
        labs, vecs = batch
        # A document's chunks share its metadata: encoded once per document, not per chunk.
        metadata: dict[str, dict[str, Any]] = {}
        for p in by_label.values():
            if p.doc_id not in metadata:
                encoded = _encode(p.metadata)
                reason = _too_large(len(encoded))
                if reason is not None:  # stored before Milvus was chosen: name it
                    raise InputError(f"document {p.doc_id[:200]!r}: {reason}")
                metadata[p.doc_id] = json.loads(encoded)
        col = self._ensure()
        empty = ChunkPayload("", {})
        for start in range(0, len(labs), _ROWS_PER_WRITE):
            part = labs[start:start + _ROWS_PER_WRITE].tolist()
            rows = [by_label.get(lb, empty) for lb in part]
            data = [part, [p.doc_id[:_DOC_ID_CHARS] for p in rows],
                    [metadata.get(p.doc_id, {}) for p in rows],
                    vecs[start:start + _ROWS_PER_WRITE]]
            self._call("writing vectors", partial(self._upsert, col, data))

    def remove(self, labels: Iterable[int]) -> None:
        labs = sorted({int(x) for x in labels})
        if not labs:
            return
        col = self._existing()
        if col is None:
            return
        for start in range(0, len(labs), _ALLOWED_PER_SEARCH):
            expr = label_expression(labs[start:start + _ALLOWED_PER_SEARCH])
            self._call("deleting vectors", partial(self._delete, col, expr))

    def _upsert(self, col: Any, data: list[Any], using: str) -> None:
        col.upsert(data, timeout=self._milvus.timeout)

    def _delete(self, col: Any, expr: str, using: str) -> None:
        col.delete(expr, timeout=self._milvus.timeout)

    def search(self, query: Vectors, k: int, allowed: set[int] | None = None,
               where: Filter | None = None) -> list[tuple[int, float]]:
        vec = check_query(query, self._dim)
        if k <= 0 or (allowed is not None and not allowed):
            return []
        col = self._existing()
        if col is None:
            return []
        k = min(k, MAX_TOP_K)
        base = milvus_expression(where) if where else ""
        if allowed is None:
            return self._search(col, vec, k, base)
        # Top k of a union is the top k of the parts' top k: one search per slice of labels.
        labs = sorted(allowed)
        hits: Hits = []
        for start in range(0, len(labs), _ALLOWED_PER_SEARCH):
            expr = label_expression(labs[start:start + _ALLOWED_PER_SEARCH])
            hits += self._search(col, vec, k, f"({base}) and {expr}" if base else expr)
        hits.sort(key=lambda h: (-h[1], h[0]))
        return hits[:k]

    def _search(self, col: Any, vec: Vectors, k: int, expr: str) -> Hits:
        param = {"metric_type": "IP", "params": {"ef": max(self.ef_search, k)}}
        level = self._level()
        found = self._call("searching vectors", lambda a: col.search(
            [vec.tolist()], "vector", param, limit=k, expr=expr or None,
            consistency_level=level, timeout=self._milvus.timeout))
        self._strong = False
        hits = [(int(h.id), float(h.distance)) for h in found[0]]
        hits.sort(key=lambda h: (-h[1], h[0]))
        return hits

    def save(self, generation: int) -> None:
        """Seal what was written (a flush: segments then get their HNSW index) and record
        the generation."""
        col = self._ensure()
        self._call("flushing vectors", lambda a: col.flush(timeout=self._milvus.timeout))
        self.stamp(generation)

    def stamp(self, generation: int) -> None:
        col = self._ensure()
        self._call("recording the generation", lambda a: col.set_properties(
            {GENERATION: str(int(generation))}, timeout=self._milvus.timeout))

    def clear(self) -> None:
        """Drop the collection (no tombstones left behind, unlike deleting every row); the
        next write makes it again, empty, with the aliases it had."""
        pm = pymilvus()
        col = self._existing()
        if col is None:
            return
        timeout = self._milvus.timeout

        def drop(alias: str) -> list[str]:
            names = aliases_of(self.name, alias, timeout)
            for name in names:  # a dropped collection's alias would dangle forever
                pm.utility.drop_alias(name, using=alias, timeout=timeout)
            col.release(timeout=timeout)
            pm.utility.drop_collection(self.name, using=alias, timeout=timeout)
            return names

        kept = self._call(f"dropping collection {self.name}", drop)
        self._col = None
        self._restore = [n for n in kept if n != self._alias]

    @property
    def deleted(self) -> int:
        """Milvus counts no tombstones a caller could see; compaction purges them."""
        return 0

    def disk_bytes(self) -> int:
        """Milvus reports rows, not bytes, through its API: 0 (see its own metrics)."""
        return 0

    def compact(self) -> None:
        """Milvus compaction: merges small segments and purges deleted rows."""
        col = self._existing()
        if col is None:
            return
        timeout = self._milvus.timeout

        def run(alias: str) -> None:
            col.compact(timeout=timeout)
            col.wait_for_compaction_completed(timeout=max(timeout, 60))

        self._call("compacting", run)


def _encode(metadata: Any) -> bytes:
    """The metadata as pymilvus sends it (compact JSON, UTF-8): what Milvus's limit counts,
    and, read back, what Milvus will hold (values JSON cannot carry as the store does)."""
    return json.dumps(dict(metadata), ensure_ascii=False, separators=(",", ":"),
                      default=str).encode("utf-8")


def _too_large(size: int) -> str | None:
    if size <= MAX_METADATA_BYTES:
        return None
    return (f"its metadata is {size:,} bytes as JSON; the Milvus vector index holds at most "
            f"{MAX_METADATA_BYTES:,} per document (keep large fields out of metadata)")
