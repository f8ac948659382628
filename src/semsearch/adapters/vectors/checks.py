"""What every vector index refuses, and how it reads a batch, in one place: each backend
(in memory, pgvector, ...) must answer bad input with the same InputError, so the contract
suite can hold them to one behaviour."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from semsearch.core.filters import Filter
from semsearch.errors import InputError
from semsearch.ports import Vectors

Labels = npt.NDArray[np.int64]


def check_vectors(vectors: Vectors, dim: int, what: str) -> Vectors:
    """``vectors`` as contiguous float32 rows of ``dim``, finite; else InputError."""
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InputError(f"{what}: expected dimension {dim}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what}: vectors contain NaN or infinite values")
    return arr


def check_query(query: Vectors, dim: int) -> Vectors:
    """One query vector (a row or a 1-row matrix), checked like an added one."""
    q = np.asarray(query, dtype=np.float32)
    q = check_vectors(q.reshape(1, -1) if q.ndim == 1 else q, dim, "search")
    if len(q) != 1:
        raise InputError(f"search: expected one query vector, got {len(q)}")
    row: Vectors = q[0]
    return row


def upsert_batch(labels: Sequence[int], vectors: Vectors,
                 dim: int) -> tuple[Labels, Vectors] | None:
    """Labels and checked vectors of an ``add``, the last duplicate of a label kept (in
    batch order); None for an empty batch."""
    labs = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labs) == 0 and np.size(vectors) == 0:
        return None
    vecs = check_vectors(vectors, dim, "add")
    if len(labs) != len(vecs):
        raise InputError(f"add: {len(labs)} labels but {len(vecs)} vectors")
    if (labs < 0).any():
        raise InputError("add: labels must be non-negative")
    _, last = np.unique(labs[::-1], return_index=True)
    if len(last) != len(labs):
        keep = np.sort(len(labs) - 1 - last)
        labs, vecs = labs[keep], vecs[keep]
    return labs, vecs


def refuse_where(where: Filter | None) -> None:
    """An index that keeps no metadata (``filters = False``) cannot evaluate a filter: the
    caller must pass the store's ``allowed`` labels instead. Saying so beats ignoring it."""
    if where:
        raise InputError("this vector index keeps no metadata and cannot evaluate a filter "
                         "itself; pass the labels the store found (allowed)")
