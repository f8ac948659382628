"""A dense index for one collection, persisted in a directory so that a write costs what it
changes and opening costs (almost) nothing.

On disk (all names but the manifest carry the snapshot's epoch, a random token):

- ``vectors-<e>.f32``: float32 rows, append-only. A row is never rewritten: an upsert
  appends a new row, a removal leaves a dead row behind until compaction. Searches read it
  through ``np.memmap``, so opening never loads it and RAM holds only the rows touched.
- ``labels-<e>.npy`` / ``rows-<e>.npy``: at the snapshot, every live label (sorted) and its
  row. Sorted numpy arrays and ``searchsorted`` instead of a dict of a million ints.
- ``graph-<e>.usearch``: above ``ann_threshold``, a usearch HNSW graph over int8-quantized
  copies of the vectors, keyed by label. It finds candidates; their float32 rows rescore
  them, so scores are exact and recall is the graph's recall at the candidate pool.
- ``changes-<e>.log``: the changes since the snapshot (see ``vector_log``). ``save`` appends
  the rows and one framed group of records ending in a commit, and fsyncs: O(change).
- ``manifest.json``: format marker, epoch, generation and file names; replaced atomically,
  last, by a snapshot. It is the commit point of a snapshot.

Opening maps the float32 file, loads the label arrays and the graph, and replays the log up
to its last commit into a small dict plus the graph. A snapshot (compaction) is written by
``compact()`` and automatically after a save when the log or the dead rows grow: new files
beside the old ones, manifest last, old files removed after. Any file that cannot be trusted
makes the index open empty at generation -1, and the caller rebuilds it from the canonical
store, as it does for the old (numpy + hnswlib) format, which is not read any more.

Saves and snapshots of several processes on one directory are serialized by a ``flock`` on
``.lock``; a save finding the files changed under it (another process's save) writes a full
snapshot of its own state instead of appending to a log it did not read.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import mmap
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from semsearch.adapters import locks
from semsearch.adapters.storage import write_error
from semsearch.adapters.vectors import vector_log
from semsearch.adapters.vectors.checks import check_query, refuse_where, upsert_batch
from semsearch.core.filters import Filter
from semsearch.errors import InputError
from semsearch.ports import ChunkPayload, Vectors

if TYPE_CHECKING:
    from usearch.index import Index as UsearchIndex

log = logging.getLogger(__name__)
_WHAT = "the vector index"
FORMAT = "semsearch-vectors/2"
OLD_FILES = ("vectors.npy", "labels.npy", "hnsw.bin")  # the format before FORMAT
DEAD = -1  # in the row -> label array: a row no live label points at
SPILL_BYTES = 64 << 20  # pending rows of a private (never saved) file go to disk past this
PREAD_ROWS = 4096  # up to this many rows are read with pread, more through the map
CHUNK_ROWS = 65536  # rows scored or read per step: bounds memory of scans and builds
AUTO_EF_MAX = 2048  # widest beam graph_ef picks by itself
# usearch inserting with several threads into a small graph leaves some nodes unreachable
# (a 300-vector graph answered ~1 in 15 queries without a true neighbour): a graph takes
# its first GRAPH_SEED vectors one thread at a time (0.12 s for 2,000), the rest in
# parallel, where later inserts link the early ones.
GRAPH_SEED = 4096
BACKGROUND_MIN = 50_000  # below this many vectors a snapshot is cheap: taken inline
ORPHAN_AGE = 3600.0  # seconds before an unreferenced epoch file counts as a crash leftover
Labels = npt.NDArray[np.int64]
Hits = list[tuple[int, float]]


def _usearch() -> type[UsearchIndex]:
    """usearch's index class, imported on first use and after onnxruntime: with usearch
    2.26.6 and onnxruntime 1.32, importing usearch's compiled module first makes the later
    ``import onnxruntime`` (the embedder's, at its first use) crash the process with a
    segmentation fault; the other order works."""
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime  # noqa: F401
    from usearch.index import Index

    return Index


@dataclass
class _Disk:
    """The snapshot this process is in step with: its epoch, where its log's committed part
    ends, and the files its manifest names."""

    epoch: str
    log_end: int
    files: dict[str, str] = field(default_factory=dict)


def _graph_add(graph: UsearchIndex, labels: Labels, vecs: Vectors) -> None:
    """Add to the graph: up to GRAPH_SEED vectors in all one thread at a time, then in
    parallel for batches of 1,024+ (see GRAPH_SEED)."""
    seed = max(0, min(len(labels), GRAPH_SEED - len(graph)))
    if seed:
        graph.add(labels[:seed].astype(np.uint64), vecs[:seed], threads=1)
    if seed < len(labels):
        rest = labels[seed:]
        graph.add(rest.astype(np.uint64), vecs[seed:], threads=0 if len(rest) >= 1024 else 1)


def _files(epoch: str, f32: str) -> dict[str, str]:
    return {"vectors": f32, "labels": f"labels-{epoch}.npy", "rows": f"rows-{epoch}.npy",
            "graph": f"graph-{epoch}.usearch", "log": f"changes-{epoch}.log"}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes, written: list[Path]) -> None:
    """Write a whole small file and fsync it; ``written`` collects it for cleanup."""
    written.append(path)
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")  # bytes: a short write slices bytes, not rows
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class LocalVectorIndex:
    """``VectorIndex`` over one collection stored under ``path``.

    ``generation`` is the canonical-store generation the contents reflect as of the last
    load or ``save``; -1 means unknown (nothing loadable, or ``clear``ed) and tells the caller
    to rebuild. Thread-safe through one lock: searches are short, writes are batched.
    ``rescore_pool``/``rescore_factor``: the graph proposes max(pool, factor*k) candidates
    that the float32 rows rescore. ``compact_changes``: a save whose snapshot has this many
    changed labels since it takes a new snapshot (bounds the replay at open);
    ``compact_dead``: so does a share of dead rows this large (and at least
    ``compact_dead_min`` of them), rewriting the float32 file.
    """

    filters = False  # filtered through the store's allowed labels

    def __init__(self, path: Path, dimension: int, ann_threshold: int = 20000,
                 ef_search: int = 256, m: int = 16, ef_construction: int = 200, *,
                 filter_exact_below: int = 2000, filter_exact_fraction: float = 0.1,
                 rescore_pool: int = 64, rescore_factor: int = 4,
                 compact_changes: int = 4096, compact_dead: float = 0.3,
                 compact_dead_min: int = 10_000, background: bool = True) -> None:
        if dimension <= 0:
            raise InputError(f"vector dimension must be positive, got {dimension}")
        self._dir = Path(path)
        self._dim = dimension
        self._row_bytes = 4 * dimension
        self.ann_threshold = ann_threshold
        self.ef_search = ef_search
        self._m = m
        self._ef_construction = ef_construction
        # Below these sizes a filter is answered exactly: gathering the allowed rows is cheap,
        # and graph search with a selective filter would need a huge over-fetch.
        self.filter_exact_below = filter_exact_below
        self.filter_exact_fraction = filter_exact_fraction
        self.rescore_pool = rescore_pool
        self.rescore_factor = rescore_factor
        self.compact_changes = compact_changes
        self.compact_dead = compact_dead
        self.compact_dead_min = compact_dead_min
        self.background = background
        self._lock = threading.RLock()  # the in-memory state: searches hold it briefly
        # Held by whatever changes the contents (add, remove, clear, save, compaction),
        # before _lock: a background snapshot holds only this while it writes its files,
        # so searches go on and take _lock only for the switch to the new epoch.
        self._writing = threading.RLock()
        self._compactor: threading.Thread | None = None
        self._reset()
        self._load()

    # -- state --------------------------------------------------------------------------

    def _reset(self) -> None:
        self._base_labels: Labels = np.empty(0, np.int64)  # live labels at the snapshot
        self._base_rows: Labels = np.empty(0, np.int64)
        self._delta: dict[int, int] = {}  # label -> row (DEAD: removed) since the snapshot
        self._delta_sorted: tuple[Labels, Labels] | None = None
        self._dirty: set[int] = set()  # labels changed since the last save
        self._row_label: Labels = np.empty(0, np.int64)  # row -> label, DEAD if none
        self._rows = 0  # rows in the file plus pending ones
        self._file_rows = 0  # rows written to the float32 file
        self._pend: Vectors = np.empty((0, self._dim), np.float32)  # rows _file_rows.._rows
        self._mm: Vectors | None = None
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd[1])  # type: ignore[index]
        self._fd: tuple[str, int] | None = None
        self._f32 = f"vectors-{uuid.uuid4().hex[:16]}.f32"  # private until a snapshot
        self._disk: _Disk | None = None
        self._graph: UsearchIndex | None = None
        self._graph_removed = 0  # removals since the graph was built (its tombstones)
        self._n = 0
        self._generation = -1

    @property
    def missing(self) -> bool:
        return False  # recreated where it is opened; a gap in generation says rebuild

    def refusal(self, payload: ChunkPayload) -> str | None:
        return None  # keeps no payload

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def ann_built(self) -> bool:
        return self._graph is not None

    def __len__(self) -> int:
        return self._n

    @property
    def deleted(self) -> int:
        """Dead rows (removed or replaced vectors) still in the float32 file until compaction."""
        return self._rows - self._n

    def disk_bytes(self) -> int:
        if not self._dir.exists():
            return 0
        return sum(p.stat().st_size for p in self._dir.iterdir() if p.is_file())

    # -- label <-> row ------------------------------------------------------------------

    def _lookup(self, labels: Labels) -> Labels:
        """Current row of each label, DEAD for labels not in the index."""
        rows = np.full(len(labels), DEAD, np.int64)
        if len(self._base_labels):
            at = np.searchsorted(self._base_labels, labels)
            at = np.minimum(at, len(self._base_labels) - 1)
            hit = self._base_labels[at] == labels
            rows[hit] = self._base_rows[at[hit]]
        if self._delta:
            if self._delta_sorted is None:
                keys = np.fromiter(self._delta.keys(), np.int64, len(self._delta))
                vals = np.fromiter(self._delta.values(), np.int64, len(self._delta))
                order = np.argsort(keys)
                self._delta_sorted = keys[order], vals[order]
            keys, vals = self._delta_sorted
            at = np.minimum(np.searchsorted(keys, labels), len(keys) - 1)
            hit = keys[at] == labels
            rows[hit] = vals[at[hit]]
        return rows

    def _set(self, label: int, row: int) -> None:
        self._delta[label] = row
        self._dirty.add(label)
        self._delta_sorted = None

    def _live(self) -> tuple[Labels, Labels]:
        """Every live (label, row), sorted by label."""
        rows = np.flatnonzero(self._row_label[: self._rows] != DEAD).astype(np.int64)
        labels = self._row_label[rows]
        order = np.argsort(labels)
        return labels[order], rows[order]

    # -- rows -----------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self._dir / name

    def _append_rows(self, vecs: Vectors) -> Labels:
        """Pending rows for ``vecs``; returns their row numbers."""
        start = self._rows
        pending = self._rows - self._file_rows
        if pending + len(vecs) > len(self._pend):
            grown = np.empty((max(pending + len(vecs), 2 * len(self._pend), 256), self._dim),
                             np.float32)
            grown[:pending] = self._pend[:pending]
            self._pend = grown
        self._pend[pending: pending + len(vecs)] = vecs
        self._rows += len(vecs)
        if len(self._row_label) < self._rows:
            grown_labels = np.full(max(self._rows, 2 * len(self._row_label), 1024), DEAD,
                                   np.int64)
            grown_labels[: len(self._row_label)] = self._row_label
            self._row_label = grown_labels
        if self._disk is None and (self._rows - self._file_rows) * self._row_bytes > SPILL_BYTES:
            # A private file (a rebuild): nobody else reads it, so write early and keep RAM
            # flat; the rows count only once a snapshot's manifest names the file.
            try:
                self._write_pending(sync=False)
            except OSError as exc:
                raise write_error(_WHAT, self._dir, exc) from exc
        return np.arange(start, self._rows, dtype=np.int64)

    def _write_pending(self, *, sync: bool) -> None:
        """Write pending rows at the end of our float32 file. On failure the file is cut
        back and the rows stay pending."""
        pending = self._rows - self._file_rows
        self._dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(self._f32), os.O_RDWR | os.O_CREAT, 0o644)
        offset = self._file_rows * self._row_bytes
        try:
            try:
                for start in range(0, pending, CHUNK_ROWS):
                    part = np.ascontiguousarray(self._pend[start: min(pending,
                                                                      start + CHUNK_ROWS)])
                    _pwrite_all(fd, part.data, offset + start * self._row_bytes)
                if sync:
                    os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, offset)
                raise
        finally:
            os.close(fd)
        self._file_rows = self._rows
        self._pend = np.empty((0, self._dim), np.float32)
        self._mm = None
        self._reader()  # hold the file from its first row on

    def _reader(self) -> int:
        """A read-only descriptor of the float32 file, kept open (reopened when the file
        changes name)."""
        if self._fd is None or self._fd[0] != self._f32:
            if self._fd is not None:
                os.close(self._fd[1])
            self._fd = (self._f32, os.open(self._path(self._f32), os.O_RDONLY))
        return self._fd[1]

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd[1])

    def _map(self) -> Vectors | None:
        if self._file_rows == 0:
            return None
        if self._mm is None or len(self._mm) != self._file_rows:
            # Mapped through our descriptor, not the name: another process's snapshot may
            # have unlinked the file, which stays readable for us.
            raw = mmap.mmap(self._reader(), self._file_rows * self._row_bytes,
                            access=mmap.ACCESS_READ)
            self._mm = np.frombuffer(raw, np.float32).reshape(self._file_rows, self._dim)
        return self._mm

    def _vectors(self, rows: Labels) -> Vectors:
        """The float32 rows (file rows through the map, pending ones from RAM)."""
        out = np.empty((len(rows), self._dim), np.float32)
        in_file = rows < self._file_rows
        if in_file.any() and in_file.sum() <= PREAD_ROWS:
            # Candidates to rescore: a pread per row. Faulting them in through the map
            # would map whole folios around each row (59 MB for 64 rows of a 92 MB file
            # here, MADV_RANDOM or not) and RSS would soon hold the whole file.
            fd = self._reader()
            at = np.flatnonzero(in_file)
            buf = out.reshape(-1)
            step = self._dim
            for i, row in zip(at.tolist(), rows[at].tolist(), strict=True):
                raw = os.pread(fd, self._row_bytes, row * self._row_bytes)
                if len(raw) != self._row_bytes:
                    raise OSError(f"{self._f32} ends before row {row}")
                buf[i * step: (i + 1) * step] = np.frombuffer(raw, np.float32)
        elif in_file.any():
            mm = self._map()
            assert mm is not None
            out[in_file] = mm[rows[in_file]]
        if not in_file.all():
            out[~in_file] = self._pend[rows[~in_file] - self._file_rows]
        return out

    def _read_rows(self, rows: Labels) -> Iterator[tuple[Labels, Vectors]]:
        """(rows, vectors) in chunks, read with ``pread`` rather than through the map, so a
        full pass (a graph build, a rewrite) does not leave the whole file resident in this
        process (mapped pages count in its RSS; the page cache does not)."""
        fd = self._reader() if self._file_rows else -1
        for start in range(0, len(rows), CHUNK_ROWS):
            part = rows[start: start + CHUNK_ROWS]
            in_file = part < self._file_rows
            if not in_file.any():
                yield part, self._pend[part - self._file_rows]
                continue
            lo, hi = int(part[in_file].min()), int(part[in_file].max()) + 1
            if hi - lo > 2 * len(part) + 1024:  # scattered (a replay): row by row
                yield part, self._vectors(part)
                continue
            out = np.empty((len(part), self._dim), np.float32)
            raw = os.pread(fd, (hi - lo) * self._row_bytes, lo * self._row_bytes)
            if len(raw) != (hi - lo) * self._row_bytes:
                raise OSError(f"{self._f32} ends before row {hi}")
            block = np.frombuffer(raw, np.float32).reshape(-1, self._dim)
            out[in_file] = block[part[in_file] - lo]
            if not in_file.all():
                out[~in_file] = self._pend[part[~in_file] - self._file_rows]
            yield part, out

    # -- writes ---------------------------------------------------------------------------

    def add(self, labels: Sequence[int], vectors: Vectors,
            payloads: Sequence[ChunkPayload] | None = None) -> None:
        """Insert or replace (upsert) vectors; within one batch the last duplicate wins."""
        batch = upsert_batch(labels, vectors, self._dim)
        if batch is None:
            return
        labs, vecs = batch
        with self._writing, self._lock:
            old = self._lookup(labs)
            rows = self._append_rows(vecs)
            self._row_label[old[old != DEAD]] = DEAD
            self._row_label[rows] = labs
            for label, row in zip(labs.tolist(), rows.tolist(), strict=True):
                self._set(label, row)
            self._n += int((old == DEAD).sum())
            if self._graph is not None:
                present = old != DEAD
                if present.any():
                    self._graph.remove(labs[present].astype(np.uint64))
                    self._graph_removed += int(present.sum())
                _graph_add(self._graph, labs, vecs)

    def remove(self, labels: Iterable[int]) -> None:
        """Hide labels at once: their rows turn dead, the graph drops them."""
        labs = np.unique(np.fromiter((int(x) for x in labels), np.int64))
        with self._writing, self._lock:
            if len(labs) == 0 or self._n == 0:
                return
            rows = self._lookup(labs)
            present = rows != DEAD
            if not present.any():
                return
            labs, rows = labs[present], rows[present]
            self._row_label[rows] = DEAD
            for label in labs.tolist():
                self._set(label, DEAD)
            self._n -= len(labs)
            if self._graph is not None:
                self._graph.remove(labs.astype(np.uint64))
                self._graph_removed += len(labs)

    def clear(self) -> None:
        """Empty the in-memory index (files stay until the next ``save``); generation -> -1."""
        with self._writing, self._lock:
            self._reset()

    # -- search ---------------------------------------------------------------------------

    def search(self, query: Vectors, k: int, allowed: set[int] | None = None,
               where: Filter | None = None) -> list[tuple[int, float]]:
        refuse_where(where)
        q = check_query(query, self._dim)
        with self._lock:
            if k <= 0 or self._n == 0:
                return []
            if allowed is None:
                if self._n < self.ann_threshold:
                    return self._exact(q, k, None)
                return self._ann(q, k, None, self._n)
            wanted = np.fromiter((int(x) for x in allowed), np.int64, len(allowed))
            rows = self._lookup(wanted)
            rows = rows[rows != DEAD]
            if len(rows) == 0:
                return []
            if (self._n < self.ann_threshold or len(rows) < self.filter_exact_below
                    or len(rows) < self.filter_exact_fraction * self._n):
                return self._exact(q, k, rows)
            return self._ann(q, k, allowed, len(rows), rows)

    def _exact(self, q: Vectors, k: int, rows: Labels | None) -> Hits:
        if rows is None and self._rows <= 4 * CHUNK_ROWS:
            # Every row in place (no gather): the map and the pending rows, dead ones out.
            mm = self._map()
            parts = [mm @ q] if mm is not None else []
            parts.append(self._pend[: self._rows - self._file_rows] @ q)
            scores = np.concatenate(parts).astype(np.float32)
            live = self._row_label[: self._rows] != DEAD
            all_rows = np.flatnonzero(live).astype(np.int64)
            return self._top(q, k, all_rows, scores[live])
        if rows is None:
            rows = np.flatnonzero(self._row_label[: self._rows] != DEAD).astype(np.int64)
        if len(rows) <= CHUNK_ROWS:
            return self._top(q, k, rows, self._vectors(rows) @ q)
        best: Hits = []
        for start in range(0, len(rows), CHUNK_ROWS):  # bounded memory for a big fallback
            part = rows[start: start + CHUNK_ROWS]
            best = sorted(best + self._top(q, k, part, self._vectors(part) @ q),
                          key=lambda h: -h[1])[:k]
        return best

    def _top(self, q: Vectors, k: int, rows: Labels, scores: Vectors) -> Hits:
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(k)
        top = top[np.argsort(-scores[top], kind="stable")]
        labels = self._row_label[rows[top]]
        return [(int(lab), float(s)) for lab, s in zip(labels, scores[top], strict=True)]

    def _candidates(self, q: Vectors, count: int) -> Labels:
        """Labels the graph proposes (int8 distances: an order, not a score)."""
        graph = self._ensure_graph()
        count = min(count, len(graph))
        ef = self.graph_ef(len(graph))
        if graph.expansion_search != ef:
            graph.expansion_search = ef  # type: ignore[misc]  # it has a setter
        keys: Labels = np.asarray(graph.search(q, count, threads=1).keys, np.int64)
        return keys

    def graph_ef(self, size: int) -> int:
        """The search beam: ``ef_search``, widened to size/1000 (at most AUTO_EF_MAX) for
        big graphs. Measured on 1M vectors derived from real MiniLM ones (bench/vector_scale.py):
        the int8 graph with ef 256 finds recall@10 0.954, 512 0.974, 1024 0.989 (p50 0.8, 1.4,
        3.1 ms); a bigger rescoring pool does not help, the misses are not in the beam."""
        return max(self.ef_search, min(AUTO_EF_MAX, size // 1000))

    def _ann(self, q: Vectors, k: int, allowed: set[int] | None, size: int,
             allowed_rows: Labels | None = None) -> Hits:
        want = min(k, size)
        pool = max(self.rescore_pool, self.rescore_factor * k)
        if allowed is not None:  # over-fetch by the inverse share of allowed vectors
            pool = math.ceil(pool * self._n / size)
        keys = self._candidates(q, pool)
        if allowed is not None:
            keys = keys[np.fromiter((int(x) in allowed for x in keys), bool, len(keys))]
        rows = self._lookup(keys)
        rows = rows[rows != DEAD]
        if len(rows) < want:  # the graph came back short (a filter, islands): be exact
            return self._exact(q, k, allowed_rows)
        return self._top(q, k, rows, self._vectors(rows) @ q)

    def _new_graph(self) -> UsearchIndex:
        return _usearch()(ndim=self._dim, metric="ip", dtype="i8", connectivity=self._m,
                            expansion_add=self._ef_construction,
                            expansion_search=self.ef_search)

    def _ensure_graph(self) -> UsearchIndex:
        if self._graph is None:
            graph = self._new_graph()
            rows = np.flatnonzero(self._row_label[: self._rows] != DEAD).astype(np.int64)
            for part, vecs in self._read_rows(rows):  # front to back
                _graph_add(graph, self._row_label[part], vecs)
            self._graph, self._graph_removed = graph, 0
        return self._graph

    # -- persistence ----------------------------------------------------------------------

    def stamp(self, generation: int) -> None:
        """Stamping is saving: a save appends only what changed."""
        self.save(generation)

    def save(self, generation: int) -> None:
        """Persist and stamp ``generation``: in step with the files on disk, append the new
        rows and one committed group of log records (two fsyncs, O(change)); otherwise
        (first save, after ``clear``, another process saved meanwhile) write a snapshot. A
        failed write (a full disk) leaves the previous save whole, cuts back what it wrote
        and raises naming the folder; the contents in memory stay for the next save."""
        with self._writing, self._lock:
            if self._n >= self.ann_threshold and self._n > 0:
                self._ensure_graph()
            try:
                self._dir.mkdir(parents=True, exist_ok=True)
                with locks.flock(self._path(".lock")):
                    if self._in_step():
                        self._append_log(generation)
                    else:
                        self._snapshot(generation, rewrite=False)
            except (OSError, RuntimeError) as exc:
                raise write_error(_WHAT, self._dir, exc) from exc
            self._generation = generation
            self._maybe_compact()

    def _in_step(self) -> bool:
        """The files on disk are the snapshot we track, its log holds no other process's
        commit past ours (a torn tail of a crash is cut off here), and the float32 file
        ends where we think: then appending is safe."""
        disk = self._disk
        if disk is None:
            return False
        try:
            manifest = json.loads(self._path("manifest.json").read_text())
            if manifest.get("format") != FORMAT or manifest.get("epoch") != disk.epoch:
                return False
            log_path = self._path(disk.files["log"])
            size = log_path.stat().st_size
            if size > disk.log_end:
                if vector_log.replay(log_path.read_bytes(), disk.epoch).end > disk.log_end:
                    return False  # another process committed after us
                os.truncate(log_path, disk.log_end)
            elif size < disk.log_end:
                return False
            return self._path(self._f32).stat().st_size == self._file_rows * self._row_bytes
        except (OSError, ValueError, KeyError):
            return False

    def _append_log(self, generation: int) -> None:
        assert self._disk is not None
        if self._rows > self._file_rows:
            self._write_pending(sync=True)
        changed = np.fromiter(self._dirty, np.int64, len(self._dirty))
        state = np.fromiter((self._delta[x] for x in changed.tolist()), np.int64, len(changed))
        gone, kept = state == DEAD, state != DEAD
        records = b""
        if gone.any():
            records += vector_log.deletes(changed[gone])
        if kept.any():
            records += vector_log.upserts(changed[kept], state[kept])
        records += vector_log.commit(generation, self._file_rows)
        log_path = self._path(self._disk.files["log"])
        fd = os.open(log_path, os.O_RDWR)
        try:
            try:
                _pwrite_all(fd, records, self._disk.log_end)
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._disk.log_end)
                # The rows stay written but uncommitted: dead space a snapshot drops.
                raise
        finally:
            os.close(fd)
        self._disk.log_end += len(records)
        self._dirty.clear()

    def _snapshot(self, generation: int, *, rewrite: bool,
                  switch: contextlib.AbstractContextManager[object] | None = None) -> None:
        """Write a new epoch beside the current one, manifest last, switch memory to it,
        then drop the old files. ``rewrite`` copies the live rows into a new float32 file
        (dropping dead ones); otherwise pending rows are appended to the current file, which
        the new epoch shares. Caller holds ``self._writing`` and the directory lock, and
        ``self._lock`` unless it passes it as ``switch``: then searches run on the old epoch
        while the files are written, and ``switch`` is held only for the switch."""
        epoch = uuid.uuid4().hex[:16]
        try:
            f32_size = self._path(self._f32).stat().st_size
        except FileNotFoundError:
            f32_size = 0
        if f32_size != self._file_rows * self._row_bytes:
            rewrite = True  # someone else's rows, or a torn one, at the end: start clean
        labels, rows = self._live()
        f32 = f"vectors-{epoch}.f32" if rewrite else self._f32
        files = _files(epoch, f32)
        written: list[Path] = []
        try:
            if rewrite:
                written.append(self._path(f32))
                order = np.argsort(rows)  # copy front to back, keeping the rows' order
                self._write_rows(self._path(f32), rows[order])
                new_rows = np.empty(len(rows), np.int64)
                new_rows[order] = np.arange(len(rows), dtype=np.int64)
            else:
                if self._rows > self._file_rows:
                    self._write_pending(sync=False)
                self._path(f32).touch()
                _fsync(self._path(f32))
                new_rows = rows
            for key, array in (("labels", labels), ("rows", new_rows)):
                buf = io.BytesIO()
                np.save(buf, array, allow_pickle=False)
                _write_durable(self._path(files[key]), buf.getvalue(), written)
            if self._graph is not None:
                written.append(self._path(files["graph"]))
                self._graph.save(str(self._path(files["graph"])))
                _fsync(self._path(files["graph"]))
            _write_durable(self._path(files["log"]), vector_log.header(epoch), written)
            manifest = {"format": FORMAT, "epoch": epoch, "generation": generation,
                        "dimension": self._dim, "count": len(labels),
                        "rows": len(labels) if rewrite else self._file_rows,
                        "graph": self._graph is not None, "files": files}
            tmp = self._path(".tmp-manifest.json")
            _write_durable(tmp, json.dumps(manifest).encode(), written)
            previous = self._manifest_files()
            os.replace(tmp, self._path("manifest.json"))
            _fsync(self._dir)
        except (OSError, RuntimeError):
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise
        # Only now, with the snapshot committed, does memory switch to it; the old files
        # go after, so no search opens a file by a name that is gone.
        with switch or contextlib.nullcontext():
            if rewrite:
                self._row_label = np.empty(len(labels), np.int64)
                self._row_label[new_rows] = labels
                self._rows = self._file_rows = len(labels)
                self._pend = np.empty((0, self._dim), np.float32)
                self._mm = None
                self._f32 = f32
            self._base_labels, self._base_rows = labels, new_rows
            self._delta, self._delta_sorted, self._dirty = {}, None, set()
            self._disk = _Disk(epoch, vector_log.HEADER.size, files)
            if self._file_rows:
                self._reader()
        self._drop_files(previous, set(files.values()) | {"manifest.json", ".lock"})

    def _write_rows(self, path: Path, rows: Labels) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            for _, vecs in self._read_rows(rows):
                _pwrite_all(fd, vecs.data, offset)
                offset += vecs.nbytes
            os.fsync(fd)
        finally:
            os.close(fd)

    def _manifest_files(self) -> list[str]:
        try:
            manifest = json.loads(self._path("manifest.json").read_text())
            return [str(x) for x in manifest.get("files", {}).values()]
        except (OSError, ValueError, AttributeError):
            return []

    def _drop_files(self, previous: list[str], keep: set[str]) -> None:
        """After a snapshot: the previous one's files and the old format's go at once;
        epoch files no manifest names, left by a crash, once old enough that no other
        process can still be writing them (a rebuild in progress elsewhere)."""
        for name in [*previous, *OLD_FILES]:
            if name not in keep:
                with contextlib.suppress(OSError):
                    self._path(name).unlink(missing_ok=True)
        now = time.time()
        for p in self._dir.iterdir():
            if p.name in keep or not p.name.startswith(("vectors-", "labels-", "rows-",
                                                        "graph-", "changes-", ".tmp-")):
                continue
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > ORPHAN_AGE:
                    p.unlink()

    def _maybe_compact(self) -> None:
        """After a save: snapshot when the log has grown (open replays it) or rewrite when
        dead rows take a large share of the file. Big indexes do it on a thread."""
        dead_share = self.deleted / max(self._rows, 1)
        rewrite = dead_share > self.compact_dead and self.deleted >= self.compact_dead_min
        if not rewrite and len(self._delta) < self.compact_changes:
            return
        if not self.background or self._n < BACKGROUND_MIN:
            self._compact_in_step(rewrite)
            return
        if self._compactor is not None and self._compactor.is_alive():
            return
        self._compactor = threading.Thread(target=self._compact_in_step, args=(rewrite,),
                                           name=f"compact {self._dir}", daemon=True)
        self._compactor.start()

    def _compact_in_step(self, rewrite: bool) -> None:
        """A snapshot of what is saved, if we are still in step with the disk. Writers wait
        meanwhile; searches do not (they are held only for the switch to the new epoch). A
        failure is logged: the log stays valid, the next save tries again."""
        with self._writing:
            with self._lock:
                if self._generation < 0 or self._dirty or self._rows > self._file_rows:
                    return  # unsaved changes: the next save decides
                generation = self._generation
                if self._file_rows:
                    self._reader()  # opened here, not raced by a search's lazy open
            try:
                with locks.flock(self._path(".lock")):
                    if self._in_step():
                        self._snapshot(generation, rewrite=rewrite, switch=self._lock)
            except (OSError, RuntimeError) as exc:
                log.warning("compacting %s failed (%s); the change log stays valid",
                            self._dir, exc)

    def wait_compaction(self, timeout: float | None = None) -> None:
        """Block until a background compaction (if any) is done: for tests and benchmarks."""
        thread = self._compactor
        if thread is not None:
            thread.join(timeout)

    def compact(self) -> None:
        """Drop dead rows and graph tombstones, then snapshot at the same generation. The
        graph is rebuilt from the live vectors only when tombstones are a tenth of it:
        results are the same, float32 rescoring makes the scores exact either way."""
        self.wait_compaction()
        with self._writing, self._lock:
            if self._graph is not None and self._graph_removed > 0.1 * max(len(self._graph), 1):
                self._graph = None
                self._ensure_graph()
            self._graph_removed = 0
            generation = self._generation
            if generation < 0:
                return
            try:
                self._dir.mkdir(parents=True, exist_ok=True)
                with locks.flock(self._path(".lock")):
                    self._snapshot(generation, rewrite=True)
            except (OSError, RuntimeError) as exc:
                raise write_error(_WHAT, self._dir, exc) from exc

    # -- open -----------------------------------------------------------------------------

    def _load(self) -> None:
        manifest_path = self._path("manifest.json")
        if not manifest_path.exists():
            return
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                log.warning("vector index at %s is in an older format; it will be rebuilt",
                            self._dir)
                return
            if int(manifest["dimension"]) != self._dim:
                raise ValueError(f"dimension {manifest['dimension']} != {self._dim}")
            epoch, count = str(manifest["epoch"]), int(manifest["count"])
            files = {str(k): str(v) for k, v in manifest["files"].items()}
            labels = np.load(self._path(files["labels"]), allow_pickle=False)
            rows = np.load(self._path(files["rows"]), allow_pickle=False)
            if (labels.dtype != np.int64 or rows.dtype != np.int64
                    or labels.shape != (count,) or rows.shape != (count,)):
                raise ValueError(f"label files disagree with manifest count {count}")
            if count and (np.any(np.diff(labels) <= 0) or rows.min() < 0):
                raise ValueError("label file not strictly sorted")
            file_rows = self._path(files["vectors"]).stat().st_size // self._row_bytes
            if file_rows < int(manifest["rows"]) or (count and int(rows.max()) >= file_rows):
                raise ValueError(f"float32 file holds {file_rows} rows, fewer than recorded")
            replayed = vector_log.replay(self._path(files["log"]).read_bytes(), epoch)
            if replayed.rows > file_rows:
                raise ValueError("change log names rows past the end of the float32 file")
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring vector index at %s (%s); it will be rebuilt", self._dir, exc)
            return
        self._base_labels, self._base_rows = labels, rows
        self._f32, self._file_rows, self._rows = files["vectors"], file_rows, file_rows
        self._row_label = np.full(max(file_rows, 1024), DEAD, np.int64)
        self._row_label[rows] = labels
        self._replay(replayed)
        self._n = int((self._row_label[:file_rows] != DEAD).sum())
        self._generation = (replayed.generation if replayed.generation is not None
                            else int(manifest["generation"]))
        self._disk = _Disk(epoch, replayed.end, files)
        if file_rows:
            try:
                self._reader()  # hold the rows even if another process unlinks the file
            except OSError as exc:
                log.warning("ignoring vector index at %s (%s); it will be rebuilt",
                            self._dir, exc)
                self._reset()
                return
        if manifest.get("graph"):
            self._open_graph(self._path(files["graph"]), count)

    def _replay(self, replayed: vector_log.Replay) -> None:
        """Apply the log's committed changes to the rows and the delta."""
        for kind, labs, at in replayed.ops:
            old = self._lookup(labs)
            self._row_label[old[old != DEAD]] = DEAD
            if kind == "U":
                assert at is not None
                self._row_label[at] = labs
                self._delta.update(zip(labs.tolist(), at.tolist(), strict=True))
            else:
                self._delta.update(dict.fromkeys(labs.tolist(), DEAD))
            self._delta_sorted = None

    def _open_graph(self, path: Path, count: int) -> None:
        """Load the snapshot's graph (read into RAM: usearch cannot add to a view) and
        replay the logged changes into it; a graph that fails is dropped and rebuilt on
        demand from the float32 rows."""
        try:
            graph = _usearch().restore(str(path))
            if graph is None or graph.ndim != self._dim or len(graph) != count:
                raise ValueError("graph does not match the snapshot")
            # The file keeps the graph, not the build parameters: later adds use ours.
            graph.expansion_add = self._ef_construction  # type: ignore[misc]  # has a setter
            if self._delta:
                labs = np.fromiter(self._delta.keys(), np.int64, len(self._delta))
                present = np.asarray(graph.contains(labs.astype(np.uint64)), bool)
                if present.any():
                    graph.remove(labs[present].astype(np.uint64))
                rows = self._lookup(labs)
                live = rows != DEAD
                for part, vecs in self._read_rows(rows[live]):
                    _graph_add(graph, self._row_label[part], vecs)
            if len(graph) != self._n:
                raise ValueError(f"graph holds {len(graph)} vectors, index {self._n}")
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("dropping vector graph at %s (%s); rebuilt on demand", self._dir, exc)
            return
        self._graph, self._graph_removed = graph, 0
