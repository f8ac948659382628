"""Recommendations from a user's history, with a cold-start fallback.

One strategy answers, and the result says which:

1. ``history``: at least one liked (positive) id is in the collection. The query is
   Rocchio's: the weighted mean of the liked documents' vectors, normalized, minus
   ``BETA`` times the normalized weighted mean of the disliked ones, then normalized.
2. ``profile``: no usable likes, but side information as text (stated interests, a
   profile): it is embedded as a query, minus the dislikes as above.
3. ``central``: neither: the documents nearest the collection's centroid (the mean of
   every document vector, cached per collection generation), its most central items,
   minus the dislikes as above. (There is no popularity signal in a collection to rank by.)

Ids that are not in the collection (a history may hold deleted items) are ignored and
listed in the result as ``unknown``; a history whose likes are all unknown falls back to
the next strategy. Liked, disliked and seen ids are never recommended."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semsearch.core.filters import Filter
from semsearch.core.types import Hit, InputType
from semsearch.core.unicode import require_unicode
from semsearch.errors import InputError
from semsearch.ports import Vectors
from semsearch.runtime.collection import Collection
from semsearch.runtime.engine import Engine
from semsearch.services.doc_vectors import centroid, document_vectors
from semsearch.services.neighbours import check_k, nearest_documents

BETA = 0.5  # weight of the dislikes against the likes (Rocchio's beta, with alpha 1)
MAX_ITEMS = 1000  # liked or disliked ids in one request, each
MAX_SEEN = 10_000
MAX_WEIGHT = 1e6
STRATEGIES = ("history", "profile", "central")


@dataclass(frozen=True)
class Rated:
    """An item of a history, with how much it counts (a rating, a dwell time)."""

    id: str
    weight: float = 1.0


@dataclass(frozen=True)
class RecommendRequest:
    positive: tuple[Rated, ...] = ()
    negative: tuple[Rated, ...] = ()
    seen: tuple[str, ...] = ()
    profile: str = ""
    k: int = 10
    filter: Filter = field(default_factory=Filter)

    def validate(self) -> None:
        check_k(self.k)
        for what, items in (("positive", self.positive), ("negative", self.negative)):
            if len(items) > MAX_ITEMS:
                raise InputError(f"at most {MAX_ITEMS:,} {what} ids, got {len(items):,}")
            for i, item in enumerate(items):
                _check_id(item.id, f"{what} #{i + 1}")
                w = item.weight
                if isinstance(w, bool) or not isinstance(w, int | float) \
                        or not math.isfinite(w) or not 0 < w <= MAX_WEIGHT:
                    raise InputError(f"{what} #{i + 1} ({item.id!r}): the weight must be a "
                                     f"number above 0 and at most {MAX_WEIGHT:g}, got {w!r}")
        if len(self.seen) > MAX_SEEN:
            raise InputError(f"at most {MAX_SEEN:,} seen ids, got {len(self.seen):,}")
        for i, doc_id in enumerate(self.seen):
            _check_id(doc_id, f"seen #{i + 1}")
        if self.profile:
            require_unicode(self.profile, "the profile")


def _check_id(doc_id: Any, what: str) -> None:
    if not isinstance(doc_id, str) or not doc_id:
        raise InputError(f"{what}: an id is a non-empty string, got {doc_id!r}")


@dataclass
class Recommendations:
    strategy: str  # history, profile or central
    hits: list[Hit]
    unknown: list[str]  # ids of the request not in the collection, ignored
    version: str
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "items": [h.to_dict() for h in self.hits],
                "unknown": self.unknown, "version": self.version,
                "timings_ms": {k: round(v * 1000, 3) for k, v in self.timings.items()}}


def _mean(items: list[Rated], vectors: dict[str, Vectors]) -> Vectors | None:
    """The normalized weighted mean of the known items' vectors (None if none is known)."""
    known = [r for r in items if r.id in vectors]
    if not known:
        return None
    total = sum((r.weight * vectors[r.id].astype(np.float64) for r in known),
                np.zeros_like(vectors[known[0].id], dtype=np.float64))
    norm = float(np.linalg.norm(total))
    return None if norm < 1e-9 else (total / norm).astype(np.float32)


def recommend(engine: Engine, collection: str, req: RecommendRequest) -> Recommendations:
    req.validate()
    started = time.perf_counter()
    handle = engine.collection(collection)
    ids = list(dict.fromkeys(r.id for r in (*req.positive, *req.negative)))
    vectors = document_vectors(engine, handle, ids)
    unknown = [i for i in ids if i not in vectors]
    liked = _mean(list(req.positive), vectors)
    disliked = _mean(list(req.negative), vectors)
    strategy, base = _base(engine, handle, req, liked)
    timings = {"vectors": time.perf_counter() - started}
    exclude = {*ids, *req.seen}
    hits: list[Hit] = []
    if base is not None:
        query = base if disliked is None else base - BETA * disliked
        query = (query / max(float(np.linalg.norm(query)), 1e-12)).astype(np.float32)
        t = time.perf_counter()
        hits = nearest_documents(engine, handle, query, req.k, exclude, req.filter)
        timings["search"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    return Recommendations(strategy, hits, unknown, handle.version, timings)


def _base(engine: Engine, handle: Collection, req: RecommendRequest,
          liked: Vectors | None) -> tuple[str, Vectors | None]:
    """The first strategy that can answer, and its unit vector (None: an empty collection)."""
    if liked is not None:
        return "history", liked
    if req.profile.strip():
        v = handle.embedder.embed([req.profile], InputType.QUERY)[0]
        return "profile", (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
    center, _ = centroid(engine, handle)
    return "central", center
