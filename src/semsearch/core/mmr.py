"""Maximal marginal relevance: re-order a ranked list so each pick is relevant to the query
and unlike what was already picked (Carbonell and Goldstein, 1998).

A near-duplicate of a result already shown adds little; MMR trades a little relevance for
coverage, which is what a page of ten results on a redundant corpus (mirrored pages, many
versions of one FAQ) needs. ``lam`` 1.0 is the relevance order unchanged, 0.0 pure novelty."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def mmr_order(relevance: NDArray[np.float32], vectors: NDArray[np.float32], k: int,
              lam: float) -> list[tuple[int, float]]:
    """Indices of the ``k`` picks in pick order, each with its marginal score
    ``lam * relevance - (1 - lam) * max similarity to the picks before it``.

    ``vectors`` are unit rows (cosine is their dot product); ``relevance`` is on the same
    scale (the cosine to the query, or a score normalized to [0, 1]). Ties go to the earlier
    candidate, so ``lam`` 1.0 keeps the input order exactly."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"MMR lambda must be between 0 and 1, got {lam}")
    n = len(relevance)
    if n == 0 or k <= 0:
        return []
    sims = vectors @ vectors.T if n > 1 else np.ones((1, 1), dtype=np.float32)
    # The largest similarity of each candidate to anything picked so far.
    closest = np.full(n, -np.inf, dtype=np.float64)
    free = np.ones(n, dtype=bool)
    picks: list[tuple[int, float]] = []
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        marginal = lam * relevance.astype(np.float64) - (1.0 - lam) * penalty
        marginal[~free] = -np.inf
        best = int(np.argmax(marginal))  # argmax returns the first of equal values
        picks.append((best, float(marginal[best])))
        free[best] = False
        closest = np.maximum(closest, sims[best])
    return picks

