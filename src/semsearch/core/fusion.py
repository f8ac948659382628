"""Rank fusion for hybrid search. Pure functions: inputs are never modified.

Each input is one retriever's ranked list of ``(key, score)``, best first. The output keeps,
for every fused key, the per-component rank (1-based) and raw score so a hit can explain
itself.

- Reciprocal Rank Fusion: Cormack, Clarke & Buettcher, "Reciprocal Rank Fusion outperforms
  Condorcet and individual rank learning methods", SIGIR 2009: ``sum_i w_i / (k + rank_i)``.
- Weighted score fusion: each list's scores are normalized (min-max to [0, 1], or z-score),
  then ``sum_i w_i * norm_i``; a key missing from a list contributes that list's minimum
  (0 for min-max, the list's lowest z for z-score), so absence is never a bonus.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from semsearch.core.types import ComponentScore
from semsearch.errors import InputError

K = TypeVar("K", bound=Hashable)

FUSIONS = ("rrf", "minmax", "zscore")


@dataclass(frozen=True)
class Fused:
    key: Hashable
    score: float
    components: Mapping[str, ComponentScore]


def _components(
    lists: Mapping[str, Sequence[tuple[K, float]]],
) -> dict[K, dict[str, ComponentScore]]:
    comps: dict[K, dict[str, ComponentScore]] = {}
    for name, ranked in lists.items():
        for rank, (key, score) in enumerate(ranked, start=1):
            comps.setdefault(key, {}).setdefault(name, ComponentScore(rank, float(score)))
    return comps


def _weights(lists: Mapping[str, object], weights: Mapping[str, float] | None) -> dict[str, float]:
    w = {name: 1.0 for name in lists} if weights is None else dict(weights)
    for name in lists:
        if name not in w:
            raise InputError(f"no fusion weight for component {name!r}; got {sorted(w)}")
        if not math.isfinite(w[name]) or w[name] < 0:
            raise InputError(f"fusion weight for {name!r} must be a finite number >= 0, "
                             f"got {w[name]}")
    return w


def _sorted(scores: Mapping[K, float],
            comps: Mapping[K, Mapping[str, ComponentScore]]) -> list[Fused]:
    # Ties broken by best component rank, then key, so results are deterministic.
    order = sorted(scores, key=lambda k: (-scores[k], min(c.rank for c in comps[k].values()),
                                          str(k)))
    return [Fused(k, scores[k], dict(comps[k])) for k in order]


def rrf(lists: Mapping[str, Sequence[tuple[K, float]]], k: int = 60,
        weights: Mapping[str, float] | None = None) -> list[Fused]:
    if k < 1:
        raise InputError(f"RRF k must be >= 1, got {k}")
    w = _weights(lists, weights)
    comps = _components(lists)
    scores = {key: sum(w[name] / (k + c.rank) for name, c in cs.items())
              for key, cs in comps.items()}
    return _sorted(scores, comps)


def normalize(scores: Sequence[float], method: str) -> list[float]:
    if not scores:
        return []
    if method == "minmax":
        lo, hi = min(scores), max(scores)
        return [1.0 if hi == lo else (s - lo) / (hi - lo) for s in scores]
    if method == "zscore":
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        return [0.0 if std == 0 else (s - mean) / std for s in scores]
    raise InputError(f"unknown normalization {method!r}; use minmax or zscore")


def weighted(lists: Mapping[str, Sequence[tuple[K, float]]], method: str = "minmax",
             weights: Mapping[str, float] | None = None) -> list[Fused]:
    w = _weights(lists, weights)
    comps = _components(lists)
    normed: dict[str, dict[K, float]] = {}
    floor: dict[str, float] = {}
    for name, ranked in lists.items():
        values = normalize([s for _, s in ranked], method)
        normed[name] = {}
        for (key, _), v in zip(ranked, values, strict=True):
            normed[name].setdefault(key, v)
        floor[name] = min(values) if values else 0.0
    scores = {key: sum(w[name] * normed[name].get(key, floor[name]) for name in lists)
              for key in comps}
    return _sorted(scores, comps)


def fuse(lists: Mapping[str, Sequence[tuple[K, float]]], method: str = "rrf", *,
         rrf_k: int = 60, weights: Mapping[str, float] | None = None) -> list[Fused]:
    if method == "rrf":
        return rrf(lists, k=rrf_k, weights=weights)
    if method in ("minmax", "zscore"):
        return weighted(lists, method=method, weights=weights)
    raise InputError(f"unknown fusion {method!r}; use one of {', '.join(FUSIONS)}")
