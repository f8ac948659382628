"""A dense index for one collection, kept in memory and persisted in a directory.

The float32 matrix (plus a label array and a label -> row dict) is the authority: exact search
on it is a single matmul, fast and perfect below a few tens of thousands of rows, and the right
tool for narrow ``allowed`` filters at any size. Above ``ann_threshold`` an hnswlib graph is
built from the matrix and maintained incrementally; it is a derived cache, so anything it
cannot answer (too few filtered hits, a corrupt ``hnsw.bin``) is answered or rebuilt from the
matrix instead of failing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from semsearch.adapters.storage import write_error
from semsearch.adapters.vectors.checks import check_query, refuse_where, upsert_batch
from semsearch.core.filters import Filter
from semsearch.errors import InputError
from semsearch.ports import ChunkPayload, Vectors

log = logging.getLogger(__name__)
_WHAT = "the vector index"
Labels = npt.NDArray[np.int64]
Hits = list[tuple[int, float]]


class _Hnsw:
    """The only code touching untyped hnswlib. Built with ``allow_replace_deleted`` so new
    labels reuse tombstoned slots and the graph does not grow forever under churn."""

    def __init__(self, index: Any) -> None:
        self.index = index  # untyped; used directly only for calls that return nothing

    @classmethod
    def open(cls, dim: int, capacity: int = 1, m: int = 16, ef_construction: int = 200,
             path: Path | None = None) -> _Hnsw:
        """A new empty graph, or (given ``path``) one saved earlier."""
        index = hnswlib.Index(space="ip", dim=dim)
        if path is not None:
            index.load_index(str(path), allow_replace_deleted=True)
        else:
            index.init_index(max_elements=max(capacity, 1), M=m,
                             ef_construction=ef_construction, allow_replace_deleted=True)
        return cls(index)

    def add(self, labels: Labels, vectors: Vectors, *, new: bool) -> None:
        """``new=True`` may reuse a tombstoned slot; that is only safe for labels absent from
        the graph (else the label would live in two slots), so updates pass ``new=False``."""
        if len(labels) == 0:
            return
        needed = int(self.index.element_count) + len(labels)
        if needed > int(self.index.get_max_elements()):
            self.index.resize_index(max(needed, int(self.index.get_max_elements() * 1.5)))
        self.index.add_items(vectors, labels.astype(np.uint64), replace_deleted=new)

    def unmark_deleted(self, label: int) -> bool:
        """False when the slot was already recycled for another label."""
        try:
            self.index.unmark_deleted(label)
        except RuntimeError:
            return False
        return True

    def query(self, query: Vectors, k: int, ef: int,
              allowed: Callable[[int], bool] | None) -> Hits | None:
        """Top k by inner product, or None when hnswlib cannot find k (it raises then)."""
        self.index.set_ef(max(ef, k))
        try:
            ids, dists = self.index.knn_query(query, k=k, num_threads=1, filter=allowed)
        except RuntimeError:
            return None
        return [(int(i), 1.0 - float(d)) for i, d in zip(ids[0], dists[0], strict=True)]


class LocalVectorIndex:
    """``VectorIndex`` over one collection stored under ``path``.

    ``generation`` is the canonical-store generation the contents reflect as of the last
    load or ``save``; -1 means unknown (nothing loadable, or ``clear``ed) and tells the caller
    to rebuild. Thread-safe through one lock: searches are short, writes are batched.
    """

    filters = False  # filtered through the store's allowed labels

    def __init__(self, path: Path, dimension: int, ann_threshold: int = 20000,
                 ef_search: int = 256, m: int = 16, ef_construction: int = 200, *,
                 filter_exact_below: int = 2000, filter_exact_fraction: float = 0.1) -> None:
        if dimension <= 0:
            raise InputError(f"vector dimension must be positive, got {dimension}")
        self._path = Path(path)
        self._dim = dimension
        self.ann_threshold = ann_threshold
        self.ef_search = ef_search
        self._m = m
        self._ef_construction = ef_construction
        # Below these sizes a filter is answered exactly: gathering the allowed rows is cheap,
        # and graph search with a selective filter wanders far and may come back short.
        self.filter_exact_below = filter_exact_below
        self.filter_exact_fraction = filter_exact_fraction
        self._lock = threading.RLock()
        self._reset()
        self._load()

    def _reset(self) -> None:
        self._vecs: Vectors = np.empty((0, self._dim), dtype=np.float32)
        self._labels: Labels = np.empty(0, dtype=np.int64)
        self._n = 0
        self._row_of: dict[int, int] = {}
        self._hnsw: _Hnsw | None = None
        self._tombstones: set[int] = set()  # removed labels that may still sit in the graph
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
        return self._hnsw is not None

    def __len__(self) -> int:
        return self._n

    def add(self, labels: Sequence[int], vectors: Vectors,
            payloads: Sequence[ChunkPayload] | None = None) -> None:
        """Insert or replace (upsert) vectors; within one batch the last duplicate wins."""
        batch = upsert_batch(labels, vectors, self._dim)
        if batch is None:
            return
        labs, vecs = batch
        with self._lock:
            existed = np.fromiter((int(x) in self._row_of for x in labs), bool, len(labs))
            self._grow(self._n + int((~existed).sum()))
            for label, vec in zip(labs.tolist(), vecs, strict=True):
                row = self._row_of.get(label)
                if row is None:
                    row = self._row_of[label] = self._n
                    self._labels[row] = label
                    self._n += 1
                self._vecs[row] = vec
            if self._hnsw is not None:
                # Tombstoned labels still own a graph slot: revive it and update in place.
                for i in np.flatnonzero(~existed):
                    label = int(labs[i])
                    if label in self._tombstones:
                        self._tombstones.discard(label)
                        existed[i] = self._hnsw.unmark_deleted(label)
                self._hnsw.add(labs[existed], vecs[existed], new=False)
                self._hnsw.add(labs[~existed], vecs[~existed], new=True)

    def _grow(self, rows: int) -> None:
        if rows <= len(self._vecs):
            return
        extra = max(rows, int(len(self._vecs) * 1.5), 1024) - self._n
        self._vecs = np.concatenate([self._vecs[: self._n], np.empty((extra, self._dim),
                                                                      np.float32)])
        self._labels = np.concatenate([self._labels[: self._n], np.empty(extra, np.int64)])

    def remove(self, labels: Iterable[int]) -> None:
        """Hide labels at once: swap-remove from the matrix, tombstone in the graph."""
        with self._lock:
            for label in labels:
                row = self._row_of.pop(int(label), None)
                if row is None:
                    continue
                last = self._n - 1
                if row != last:
                    moved = int(self._labels[last])
                    self._vecs[row] = self._vecs[last]
                    self._labels[row] = moved
                    self._row_of[moved] = row
                self._n = last
                if self._hnsw is not None:
                    self._hnsw.index.mark_deleted(int(label))
                    self._tombstones.add(int(label))

    def search(self, query: Vectors, k: int, allowed: set[int] | None = None,
               where: Filter | None = None) -> list[tuple[int, float]]:
        refuse_where(where)
        q = check_query(query, self._dim)[None, :]
        with self._lock:
            if k <= 0 or self._n == 0:
                return []
            if allowed is None:
                if self._n < self.ann_threshold:
                    return self._exact(q[0], k, None)
                hits = self._ensure_ann().query(q, min(k, self._n), self.ef_search, None)
                return hits if hits is not None else self._exact(q[0], k, None)
            rows = np.fromiter((self._row_of[x] for x in allowed if x in self._row_of),
                               dtype=np.int64)
            if len(rows) == 0:
                return []
            if (self._n < self.ann_threshold or len(rows) < self.filter_exact_below
                    or len(rows) < self.filter_exact_fraction * self._n):
                return self._exact(q[0], k, rows)
            hits = self._ensure_ann().query(q, min(k, len(rows)), self.ef_search,
                                            allowed.__contains__)
            return hits if hits is not None else self._exact(q[0], k, rows)

    def _exact(self, q: Vectors, k: int, rows: Labels | None) -> Hits:
        mat = self._vecs[: self._n] if rows is None else self._vecs[rows]
        labels = self._labels[: self._n] if rows is None else self._labels[rows]
        scores = mat @ q
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(k)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(labels[i]), float(scores[i])) for i in top]

    def _ensure_ann(self) -> _Hnsw:
        if self._hnsw is None:
            hnsw = _Hnsw.open(self._dim, int(self._n * 1.25) + 16, self._m,
                              self._ef_construction)
            hnsw.add(self._labels[: self._n], self._vecs[: self._n], new=False)
            self._hnsw, self._tombstones = hnsw, set()
        return self._hnsw

    def stamp(self, generation: int) -> None:
        """This index persists only whole: stamping is saving."""
        self.save(generation)

    def save(self, generation: int) -> None:
        """Persist and stamp ``generation``. Above the threshold the graph is built first so a
        restart does not pay for it. The old manifest is unlinked before any file is replaced
        and the new one written last: a crash in between leaves no manifest, so the next load
        starts empty at -1 (rebuild) instead of mixing files from two saves. Every new file is
        written in full before that point, so a write that fails (a full disk) removes what it
        staged and leaves the previous save whole; it raises naming the folder and the cause,
        and the contents in memory stay as they are for the next save."""
        with self._lock:
            if self._n >= self.ann_threshold and self._n > 0:
                self._ensure_ann()
            staged: list[tuple[Path, Path]] = []

            def stage(name: str, write: Callable[[Path], object]) -> None:
                tmp = self._path / f".tmp-{name}"
                staged.append((tmp, self._path / name))
                write(tmp)
                with tmp.open("rb+") as fh:
                    os.fsync(fh.fileno())

            hnsw = self._hnsw
            manifest = {"generation": generation, "dimension": self._dim, "count": self._n,
                        "ann": hnsw is not None}
            try:
                self._path.mkdir(parents=True, exist_ok=True)
                stage("vectors.npy",
                      lambda p: np.save(p, self._vecs[: self._n], allow_pickle=False))
                stage("labels.npy",
                      lambda p: np.save(p, self._labels[: self._n], allow_pickle=False))
                if hnsw is not None:
                    stage("hnsw.bin", lambda p: hnsw.index.save_index(str(p)))
                stage("manifest.json", lambda p: p.write_text(json.dumps(manifest)))
            except (OSError, RuntimeError) as exc:
                for tmp, _ in staged:
                    with contextlib.suppress(OSError):
                        tmp.unlink(missing_ok=True)
                raise write_error(_WHAT, self._path, exc) from exc
            try:
                self._swap(staged, ann=hnsw is not None)
            except OSError as exc:
                raise write_error(_WHAT, self._path, exc) from exc
            self._generation = generation

    def _swap(self, staged: list[tuple[Path, Path]], *, ann: bool) -> None:
        """Put staged files in place, manifest last (see ``save``)."""
        (self._path / "manifest.json").unlink(missing_ok=True)
        if not ann:
            (self._path / "hnsw.bin").unlink(missing_ok=True)
        for tmp, final in staged:  # manifest.json is last
            os.replace(tmp, final)
        fd = os.open(self._path, os.O_RDONLY)  # make the renames durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _load(self) -> None:
        manifest_path = self._path / "manifest.json"
        if not manifest_path.exists():
            return
        try:
            manifest = json.loads(manifest_path.read_text())
            generation, count = int(manifest["generation"]), int(manifest["count"])
            if int(manifest["dimension"]) != self._dim:
                raise ValueError(f"dimension {manifest['dimension']} != {self._dim}")
            vecs = np.load(self._path / "vectors.npy", allow_pickle=False)
            labels = np.load(self._path / "labels.npy", allow_pickle=False)
            if (vecs.dtype != np.float32 or vecs.shape != (count, self._dim)
                    or labels.shape != (count,) or labels.dtype != np.int64):
                raise ValueError(f"files disagree with manifest count {count}")
            row_of = {int(x): i for i, x in enumerate(labels.tolist())}
            if len(row_of) != count:
                raise ValueError("duplicate labels")
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring vector index at %s (%s); it will be rebuilt", self._path, exc)
            return
        self._vecs, self._labels, self._n, self._row_of = vecs, labels, count, row_of
        self._generation = generation
        if manifest.get("ann"):
            try:
                hnsw = _Hnsw.open(self._dim, path=self._path / "hnsw.bin")
                in_graph = {int(x) for x in hnsw.index.get_ids_list()}  # tombstones too
                if not in_graph >= row_of.keys():
                    raise ValueError("graph is missing labels")
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("dropping hnsw graph at %s (%s); rebuilt on demand", self._path, exc)
            else:
                self._hnsw, self._tombstones = hnsw, in_graph - row_of.keys()

    @property
    def deleted(self) -> int:
        """Removed vectors still holding space (graph slots) until ``compact``."""
        return len(self._tombstones)

    def disk_bytes(self) -> int:
        if not self._path.exists():
            return 0
        return sum(p.stat().st_size for p in self._path.iterdir() if p.is_file())

    def compact(self) -> None:
        """Drop tombstoned graph slots and spare rows, then save at the same generation.
        The graph is rebuilt from the live vectors, so results are unchanged."""
        with self._lock:
            self._vecs = np.ascontiguousarray(self._vecs[: self._n])
            self._labels = np.ascontiguousarray(self._labels[: self._n])
            if self._hnsw is not None:
                self._hnsw, self._tombstones = None, set()
                self._ensure_ann()
            generation = self._generation
            if generation >= 0:
                self.save(generation)

    def clear(self) -> None:
        """Empty the in-memory index (files stay until the next ``save``); generation -> -1."""
        with self._lock:
            self._reset()
