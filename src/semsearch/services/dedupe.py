"""Near-duplicate documents: clusters of documents whose vectors are at least ``threshold``
apart in cosine (the connected components of that "near-copy" graph).

Two ways to find the pairs, the same answer where both run:

- **exact** (collections up to ``exact_limit`` documents, 20,000 by default): every pair's
  cosine of document vectors, as blocks of a matrix product in numpy.
- **ann** (larger ones): each document's vector asks the collection's vector index for its
  nearest chunks, grouped into its ``neighbours`` nearest other documents; each candidate
  pair is then confirmed on the document vectors, so a pair is kept on the same measure as
  the exact path. The index holds chunks, not documents: a long document's chunks each sit
  a little away from its mean, so candidates are taken by rank, never by their chunk's
  score. What ANN can miss: a pair beyond each other's ``neighbours`` nearest documents (a
  document with more near-copies than that still joins their cluster through the others).

A cluster lists its members with the representative first (the member most similar to the
others: the one to keep), each member's cosine to it, the lowest and highest cosine between
any two members (a chain of near-copies can join two documents that are further apart than
the threshold: ``min_similarity`` shows it), and its linking pairs."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semsearch.errors import InputError
from semsearch.ports import Vectors
from semsearch.runtime.collection import Collection
from semsearch.runtime.engine import Engine
from semsearch.services.doc_vectors import document_vectors, iter_document_vectors

METHODS = ("auto", "exact", "ann")
EXACT_LIMIT = 20_000
BLOCK = 1024  # rows of the similarity matrix computed at once
MAX_PAIRS = 2_000_000  # pairs above the threshold at most: a lower threshold links everything
PAIRS_SHOWN = 100  # linking pairs listed per cluster
EPS = 1e-6  # float32 rounding: an exact copy's cosine can be 0.99999994


@dataclass(frozen=True)
class Member:
    id: str
    similarity: float  # cosine to the cluster's representative (1 for itself)


@dataclass(frozen=True)
class Cluster:
    members: list[Member]
    min_similarity: float
    max_similarity: float
    pairs: list[tuple[str, str, float]]  # linking pairs, most similar first (capped)
    pair_count: int

    def to_dict(self) -> dict[str, Any]:
        return {"size": len(self.members), "representative": self.members[0].id,
                "members": [{"id": m.id, "similarity": round(m.similarity, 6)}
                            for m in self.members],
                "min_similarity": round(self.min_similarity, 6),
                "max_similarity": round(self.max_similarity, 6),
                "pairs": [{"a": a, "b": b, "similarity": round(s, 6)}
                          for a, b, s in self.pairs],
                "pair_count": self.pair_count}


@dataclass
class DedupeReport:
    collection: str
    version: str
    threshold: float
    method: str  # the one that ran: exact or ann
    documents: int
    clusters: list[Cluster] = field(default_factory=list)
    clusters_total: int = 0
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        """Documents that would go if each cluster kept its representative."""
        return sum(len(c.members) - 1 for c in self.clusters)

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "version": self.version,
                "threshold": self.threshold, "method": self.method,
                "documents": self.documents, "clusters_total": self.clusters_total,
                "duplicates": self.duplicates, "seconds": round(self.seconds, 3),
                "clusters": [c.to_dict() for c in self.clusters]}


def validate(threshold: float, method: str, neighbours: int, exact_limit: int) -> None:
    if not 0.0 < threshold <= 1.0:  # NaN fails too
        raise InputError(f"threshold is a cosine above 0 and at most 1, got {threshold}")
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not 1 <= neighbours <= 1000:
        raise InputError(f"neighbours must be between 1 and 1000, got {neighbours}")
    if exact_limit < 0:
        raise InputError(f"exact_limit must be 0 or more, got {exact_limit}")


def find_duplicates(engine: Engine, collection: str, threshold: float = 0.95,
                    method: str = "auto", neighbours: int = 10,
                    exact_limit: int = EXACT_LIMIT, limit: int | None = None) -> DedupeReport:
    """Clusters of near-duplicate documents, largest first (``limit`` of them at most;
    ``clusters_total`` counts them all). ``method`` auto is exact up to ``exact_limit``
    documents and ANN above."""
    validate(threshold, method, neighbours, exact_limit)
    started = time.perf_counter()
    handle = engine.collection(collection)
    n_docs = handle.info.documents
    chosen = method if method != "auto" else ("exact" if n_docs <= exact_limit else "ann")
    if chosen == "exact":
        ids, matrix = _all_vectors(engine, handle)
        pairs = _exact_pairs(ids, matrix, threshold)
        vectors = dict(zip(ids, matrix, strict=True))
    else:
        pairs = _ann_pairs(engine, handle, threshold, neighbours)
        vectors = {}
        ids = []
    groups = _components(pairs)
    members = sorted({m for g in groups for m in g} - vectors.keys())
    vectors.update(document_vectors(engine, handle, members))
    group_of = {m: i for i, g in enumerate(groups) for m in g}
    linking: list[list[tuple[str, str, float]]] = [[] for _ in groups]
    for (a, b), sim in pairs.items():
        linking[group_of[a]].append((a, b, sim))
    clusters = [_cluster(g, vectors, links) for g, links in zip(groups, linking, strict=True)
                if all(m in vectors for m in g)]
    clusters.sort(key=lambda c: (-len(c.members), c.members[0].id))
    return DedupeReport(collection=collection, version=handle.version, threshold=threshold,
                        method=chosen, documents=len(ids) if chosen == "exact" else n_docs,
                        clusters=clusters[:limit] if limit is not None else clusters,
                        clusters_total=len(clusters), seconds=time.perf_counter() - started)


Pairs = dict[tuple[str, str], float]  # (a, b) with a < b -> cosine


def _add(pairs: Pairs, a: str, b: str, sim: float) -> None:
    if len(pairs) >= MAX_PAIRS:
        raise InputError(f"over {MAX_PAIRS:,} pairs of documents are above the threshold: "
                         "it is too low to mean near-duplicates; raise it (0.9 to 0.99 is usual)")
    pairs[(a, b) if a < b else (b, a)] = sim


def _all_vectors(engine: Engine, handle: Collection) -> tuple[list[str], Vectors]:
    ids: list[str] = []
    parts: list[Vectors] = []
    for page_ids, vecs in iter_document_vectors(engine, handle):
        ids += page_ids
        parts.append(vecs)
    dim = handle.info.identity.dimension
    return ids, (np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32))


def _exact_pairs(ids: Sequence[str], matrix: Vectors, threshold: float) -> Pairs:
    pairs: Pairs = {}
    n = len(ids)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        sims = matrix[start:stop] @ matrix[start:].T  # rows against themselves and later ones
        rows = np.arange(stop - start)[:, None]
        sims[np.arange(n - start)[None, :] <= rows] = -np.inf  # each pair once, no self
        for r, c in zip(*np.nonzero(sims >= threshold - EPS), strict=True):
            _add(pairs, ids[start + r], ids[start + c], float(sims[r, c]))
    return pairs


def _ann_pairs(engine: Engine, handle: Collection, threshold: float, neighbours: int) -> Pairs:
    """Each document's ``neighbours`` nearest other documents by the vector index, kept when
    their document vectors are within the threshold."""
    pairs: Pairs = {}
    info = handle.info
    per_doc = max(1.0, info.chunks / max(info.documents, 1))
    fetch = max(neighbours + 1, math.ceil((neighbours + 1) * per_doc * 2))
    idx = handle.indexes()
    store, version = engine.store, handle.version
    for ids, vecs in iter_document_vectors(engine, handle):
        with idx.rw.read():
            found = [idx.vectors.search(v, fetch) for v in vecs]
            doc_of = store.doc_ids_by_label(version, list({lb for r in found for lb, _ in r}))
        candidates: dict[str, list[str]] = {}
        for doc, ranked in zip(ids, found, strict=True):
            near: list[str] = []
            for label, _ in ranked:
                other = doc_of.get(label)
                if other is not None and other != doc and other not in near:
                    near.append(other)
                    if len(near) == neighbours:
                        break
            candidates[doc] = near
        here = dict(zip(ids, vecs, strict=True))
        wanted = {o for near in candidates.values() for o in near} - here.keys()
        known = {**here, **document_vectors(engine, handle, sorted(wanted))}
        for doc, near in candidates.items():
            for other in near:
                if other in known:
                    sim = float(here[doc] @ known[other])
                    if sim >= threshold - EPS:
                        _add(pairs, doc, other, sim)
    return pairs


def _components(pairs: Pairs) -> list[list[str]]:
    """Connected components (union-find), each sorted, with two members or more."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for x in parent:
        groups.setdefault(find(x), []).append(x)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _cluster(group: list[str], vectors: dict[str, Vectors],
             links: list[tuple[str, str, float]]) -> Cluster:
    v = np.stack([vectors[m] for m in group])
    m = len(group)
    sums = np.zeros(m, dtype=np.float64)
    lo, hi = math.inf, -math.inf
    for start in range(0, m, BLOCK):
        sims = (v[start:start + BLOCK] @ v.T).astype(np.float64)
        sums[start:start + len(sims)] = sims.sum(axis=1)
        off = sims.copy()
        for r in range(len(sims)):
            off[r, start + r] = np.nan  # not a member against itself
        lo, hi = min(lo, float(np.nanmin(off))), max(hi, float(np.nanmax(off)))
    rep = int(np.argmax(sums))  # ties: the smallest id (group is sorted)
    to_rep = v @ v[rep]
    order = sorted(range(m), key=lambda i: (i != rep, -float(to_rep[i]), group[i]))
    members = [Member(group[i], 1.0 if i == rep else min(1.0, float(to_rep[i])))
               for i in order]
    linking = sorted(links, key=lambda p: (-p[2], p[0], p[1]))
    return Cluster(members, min(lo, 1.0), min(hi, 1.0), linking[:PAIRS_SHOWN], len(linking))
