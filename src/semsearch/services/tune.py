"""A collection's search defaults, and tuning them on labelled queries (``semsearch tune``).

What a search leaves unset (fusion method, RRF k, candidate depth, fusion weights, the
title's BM25 weight) comes from ``search_defaults``: the live revision stored for the
collection's *name*, else the built-in values (the settings). Defaults belong to the name a
user searches (``docs``), not to one of its builds (``docs@v2``): a re-index and swap keeps
them, since the user tuned "the collection", and ``docs@v2`` searched by its own name uses
``docs``'s defaults too. (A new model can shift the best fusion: run ``tune`` again after a
swap; the history keeps both.)

Revisions are kept (``SearchSettingsLog`` in the store): tuning appends one, ``revert``
marks the live one reverted, so the one before it is live again, or none (the built-ins).

``tune`` runs the train split's queries through the search service itself (the same code
every search takes, so the winner behaves in production as it scored), one coordinate at a
time from the current defaults: each parameter in turn tries its candidate values with the
others held at the best so far, for up to two passes. Starting from the current defaults
and keeping a change only when it scores higher, the winner never scores below them on
train. Query vectors are embedded once, in one batch, into the embedding cache.

Caching: ``search_defaults`` sits on every search's path, so each engine keeps what it
read for ``DEFAULTS_TTL`` seconds. A change made through this module in this process is
seen at once (the entry is dropped); one made by another process (a CLI ``tune`` while a
server runs) is seen within the TTL. A TTL, not a version check, because the check itself
would be a store round trip on every search: on PostgreSQL that is most of a keyword
search's cost."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from semsearch.core.fusion import FUSIONS
from semsearch.core.metrics import evaluate
from semsearch.core.types import InputType, Mode
from semsearch.errors import InputError
from semsearch.ports import SettingsRevision
from semsearch.runtime.collection import Collection
from semsearch.runtime.engine import Engine
from semsearch.runtime.naming import version_of

DEFAULTS_TTL = 2.0  # seconds a process serves what it read before reading again
MEASURE = "ndcg@10"
MAX_TITLE_WEIGHT = 100.0
MAX_CANDIDATES = 1000


@dataclass(frozen=True)
class SearchDefaults:
    """What a search uses for the options it leaves unset. ``weights`` None: every
    component weighs 1; ``title_weight`` None: title and text as one field. ``revision``
    is the stored revision these come from (0: the built-in values)."""

    fusion: str
    rrf_k: int
    candidates: int
    weights: Mapping[str, float] | None = None
    title_weight: float | None = None
    revision: int = 0

    def settings(self) -> dict[str, Any]:
        """The tunable values, as stored (JSON)."""
        return {"fusion": self.fusion, "rrf_k": self.rrf_k, "candidates": self.candidates,
                "weights": None if self.weights is None else dict(self.weights),
                "title_weight": self.title_weight}

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings(), "revision": self.revision}

    def describe(self) -> str:
        """One line for people: only what matters to the fusion chosen."""
        parts = [f"fusion={self.fusion}"]
        if self.fusion == "rrf":
            parts.append(f"rrf_k={self.rrf_k}")
        w = self.weights or {"dense": 1.0, "keyword": 1.0}
        parts += [f"candidates={self.candidates}",
                  f"weights=dense:{w.get('dense', 1.0):g},keyword:{w.get('keyword', 1.0):g}",
                  f"title_weight={1.0 if self.title_weight is None else self.title_weight:g}"]
        return " ".join(parts)


def builtin_defaults(engine: Engine) -> SearchDefaults:
    """The defaults of a collection never tuned: from the settings."""
    s = engine.settings
    return SearchDefaults(fusion=str(getattr(s, "fusion", "rrf") or "rrf"),
                          rrf_k=int(s.rrf_k), candidates=int(s.candidates),
                          weights=None, title_weight=getattr(s, "title_weight", None))


def checked(base: SearchDefaults, values: Mapping[str, Any], revision: int = 0) -> SearchDefaults:
    """``values`` over ``base``, validated: what a stored revision or a caller gives is
    refused with the field and the value, never passed on to fail inside a search."""
    unknown = sorted(set(values) - {"fusion", "rrf_k", "candidates", "weights", "title_weight"})
    if unknown:
        raise InputError(f"unknown search default(s) {', '.join(unknown)}; use fusion, rrf_k, "
                         "candidates, weights, title_weight")
    merged = {**base.settings(), **values}
    fusion = merged["fusion"]
    if fusion not in FUSIONS:
        raise InputError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    rrf_k, candidates = merged["rrf_k"], merged["candidates"]
    if not isinstance(rrf_k, int) or isinstance(rrf_k, bool) or rrf_k < 1:
        raise InputError(f"rrf_k must be an integer >= 1, got {rrf_k!r}")
    if not isinstance(candidates, int) or isinstance(candidates, bool) \
            or not 1 <= candidates <= MAX_CANDIDATES:
        raise InputError(f"candidates must be an integer from 1 to {MAX_CANDIDATES}, "
                         f"got {candidates!r}")
    weights = merged["weights"]
    if weights is not None:
        if not isinstance(weights, Mapping) or set(weights) - {"dense", "keyword"}:
            raise InputError(f"weights must map dense and keyword to numbers, got {weights!r}")
        weights = {"dense": 1.0, "keyword": 1.0, **{k: _number(f"weight {k}", v)
                                                   for k, v in weights.items()}}
        if any(v < 0 for v in weights.values()) or not any(v > 0 for v in weights.values()):
            raise InputError(f"weights must be >= 0 and not all 0, got {weights!r}")
    tw = merged["title_weight"]
    if tw is not None:
        tw = _number("title_weight", tw)
        if not 0 < tw <= MAX_TITLE_WEIGHT:
            raise InputError(f"title_weight must be above 0 and at most {MAX_TITLE_WEIGHT:g}, "
                             f"got {tw}")
    return SearchDefaults(fusion=fusion, rrf_k=rrf_k, candidates=candidates, weights=weights,
                          title_weight=tw, revision=revision)


def _number(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(float(value)):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


# -- reading and storing -------------------------------------------------------------------

def collection_key(name: str) -> str:
    """The name defaults are stored under: a version's (``docs@v2``) is its collection's."""
    return version_of(name)[0]


def _name_of(engine: Engine, collection: str | Collection) -> str:
    """The key of a name or handle; an unknown name raises NotFoundError (the 404)."""
    if isinstance(collection, Collection):
        return collection_key(collection.name)
    engine.collection(collection)
    return collection_key(collection)


@dataclass
class _Cache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: dict[str, tuple[float, SearchDefaults]] = field(default_factory=dict)


def _cache(engine: Engine) -> _Cache:
    # Kept on the engine (one per process and store), not in a module dict keyed by id():
    # an id can be reused by the next engine a test or a process opens.
    cache: _Cache = engine.__dict__.setdefault("_search_defaults_cache", _Cache())
    return cache


def _live(revisions: Sequence[SettingsRevision]) -> SettingsRevision | None:
    live = [r for r in revisions if r.reverted_at is None]
    return live[-1] if live else None


def _from_store(engine: Engine, key: str) -> SearchDefaults:
    base = builtin_defaults(engine)
    live = _live(engine.store.search_settings(key))
    if live is None:
        return base
    try:
        return checked(base, live.settings, live.revision)
    except InputError:  # written by another version of semsearch: serve, do not fail
        return base


def search_defaults(engine: Engine, collection: str | Collection) -> SearchDefaults:
    """The defaults searches of ``collection`` use (see the module doc for the cache)."""
    key = _name_of(engine, collection)
    cache = _cache(engine)
    now = time.monotonic()
    with cache.lock:
        hit = cache.entries.get(key)
    if hit is not None and now - hit[0] < DEFAULTS_TTL:
        return hit[1]
    found = _from_store(engine, key)
    with cache.lock:
        cache.entries[key] = (now, found)
    return found


def _forget(engine: Engine, key: str) -> None:
    cache = _cache(engine)
    with cache.lock:
        cache.entries.pop(key, None)


def store_defaults(engine: Engine, collection: str, values: Mapping[str, Any],
                   note: Mapping[str, Any] | None = None) -> SettingsRevision:
    """Append a revision: ``values`` over the built-ins, validated, stored whole (so a
    revision says everything it sets, whatever the settings become later)."""
    key = _name_of(engine, collection)
    full = checked(builtin_defaults(engine), values)
    revision = engine.store.add_search_settings(key, full.settings(), dict(note or {}))
    _forget(engine, key)
    return revision


def revert_defaults(engine: Engine, collection: str) -> tuple[SettingsRevision,
                                                               SearchDefaults]:
    """Undo the live revision; return it and the defaults in force now. InputError when
    there is nothing to revert (the built-ins are in force)."""
    key = _name_of(engine, collection)
    before = _live(engine.store.search_settings(key))
    if before is None:
        raise InputError(f"collection {key!r} has no tuned search defaults to revert: it "
                         "uses the built-in ones")
    engine.store.revert_search_settings(key)
    _forget(engine, key)
    return before, search_defaults(engine, key)


def retire_defaults(engine: Engine, name: str) -> int:
    """Revert every live revision of a collection name that is being dropped, so a new
    collection created under the name starts from the built-ins instead of inheriting
    settings tuned for other documents; the history stays, as an audit trail. Returns how
    many were reverted."""
    key = collection_key(name)
    count = 0
    while _live(engine.store.search_settings(key)) is not None:
        engine.store.revert_search_settings(key)
        count += 1
    _forget(engine, key)
    return count


@dataclass(frozen=True)
class DefaultsHistory:
    collection: str
    current: SearchDefaults
    builtin: SearchDefaults
    revisions: list[SettingsRevision]

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "current": self.current.to_dict(),
                "builtin": self.builtin.settings(),
                "history": [{"revision": r.revision, "settings": dict(r.settings),
                             "note": dict(r.note), "created_at": r.created_at,
                             "reverted_at": r.reverted_at,
                             "live": r.revision == self.current.revision}
                            for r in self.revisions]}


def defaults_history(engine: Engine, collection: str) -> DefaultsHistory:
    key = _name_of(engine, collection)
    revisions = engine.store.search_settings(key)
    _forget(engine, key)
    return DefaultsHistory(key, search_defaults(engine, key), builtin_defaults(engine),
                           revisions)


# -- tuning ----------------------------------------------------------------------------------

# The values each coordinate tries. Weights are the dense share s (dense s, keyword 1 - s):
# only their ratio changes a ranking, for RRF and for normalized scores alike.
TITLE_WEIGHTS = (1.0, 1.5, 2.0, 3.0, 5.0)
DENSE_SHARES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
RRF_KS = (5, 10, 20, 40, 60, 100)
CANDIDATES = (50, 100, 200)


@dataclass(frozen=True)
class Trial:
    defaults: SearchDefaults
    score: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.defaults.settings(), MEASURE: round(self.score, 6),
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class TuneReport:
    collection: str
    version: str
    dataset: str
    split: str
    queries: int
    baseline: Trial
    best: Trial
    trials: list[Trial]
    stored: SettingsRevision | None
    seconds: float

    @property
    def improved(self) -> bool:
        return self.best.score > self.baseline.score

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "version": self.version,
                "dataset": self.dataset, "split": self.split, "queries": self.queries,
                "measure": MEASURE, "baseline": self.baseline.to_dict(),
                "best": self.best.to_dict(), "improved": self.improved,
                "delta": round(self.best.score - self.baseline.score, 6),
                "stored_revision": None if self.stored is None else self.stored.revision,
                "trials": [t.to_dict() for t in self.trials],
                "seconds": round(self.seconds, 2)}


def _with_share(d: SearchDefaults, share: float) -> SearchDefaults:
    return replace(d, weights={"dense": round(share, 4), "keyword": round(1 - share, 4)})


def _share(d: SearchDefaults) -> float:
    w = d.weights or {"dense": 1.0, "keyword": 1.0}
    total = w.get("dense", 1.0) + w.get("keyword", 1.0)
    return round(w.get("dense", 1.0) / total, 4) if total else 0.5


COORDINATES = ("title_weight", "fusion", "weights", "rrf_k", "candidates")


def _moves(name: str, d: SearchDefaults) -> list[SearchDefaults]:
    """The settings coordinate ``name`` tries from ``d`` (``d`` itself among them)."""
    if name == "title_weight":
        tw = 1.0 if d.title_weight is None else d.title_weight
        return [replace(d, title_weight=None if w == 1.0 else w)
                for w in sorted({*TITLE_WEIGHTS, tw})]
    if name == "fusion":
        return [replace(d, fusion=f) for f in FUSIONS]
    if name == "weights":
        return [_with_share(d, s) for s in sorted({*DENSE_SHARES, _share(d)})]
    if name == "rrf_k":  # only RRF has a k
        return [replace(d, rrf_k=k) for k in sorted({*RRF_KS, d.rrf_k})] \
            if d.fusion == "rrf" else []
    return [replace(d, candidates=c) for c in sorted({*CANDIDATES, d.candidates})]


def _key(d: SearchDefaults) -> tuple[Any, ...]:
    """Settings that rank alike compare equal (weights by their ratio; rrf_k only for RRF)."""
    return (d.fusion, d.rrf_k if d.fusion == "rrf" else 0, d.candidates, _share(d),
            1.0 if d.title_weight is None else d.title_weight)


def load_labelled(engine: Engine, dataset: Path, split: str,
                  max_queries: int | None = None) -> tuple[dict[str, str],
                                                           dict[str, dict[str, int]]]:
    """The split's judged queries (a sample of ``max_queries``, fixed seed) and qrels."""
    if not Path(dataset).is_dir():
        raise InputError(f"{dataset}: not a folder; give a BEIR folder with queries.jsonl "
                         f"and qrels/{split}.tsv")
    qrels = engine.corpora.qrels(dataset, split)
    queries = engine.corpora.queries(dataset, split)
    judged = {q: t for q, t in queries.items() if any(v > 0 for v in qrels.get(q, {}).values())}
    if not judged:
        raise InputError(f"{dataset}: no query of split {split!r} has a relevant document; "
                         "nothing to tune on")
    if max_queries is not None and len(judged) > max_queries:
        keep = set(random.Random(0).sample(sorted(judged), max_queries))
        judged = {q: t for q, t in judged.items() if q in keep}
    return judged, {q: qrels[q] for q in judged}


class _Scorer:
    """Scores settings on the labelled queries through the search service, each distinct
    setting once (settings that rank alike share a key)."""

    def __init__(self, engine: Engine, handle: Collection, queries: dict[str, str],
                 qrels: dict[str, dict[str, int]]) -> None:
        self.engine, self.handle, self.queries, self.qrels = engine, handle, queries, qrels
        self.seen: dict[tuple[Any, ...], Trial] = {}
        self.trials: list[Trial] = []

    def fresh(self, d: SearchDefaults) -> bool:
        return _key(d) not in self.seen

    def __call__(self, d: SearchDefaults) -> Trial:
        from semsearch.services.search import SearchRequest, search  # search reads this module

        if (k := _key(d)) in self.seen:
            return self.seen[k]
        t0 = time.perf_counter()
        run: dict[str, dict[str, float]] = {}
        weights = d.weights or {"dense": 1.0, "keyword": 1.0}
        title_weight = 1.0 if d.title_weight is None else d.title_weight
        for qid, text in self.queries.items():
            hits = search(self.engine, self.handle, SearchRequest(
                query=text, mode=Mode.HYBRID, k=10, fusion=d.fusion, rrf_k=d.rrf_k,
                candidates=d.candidates, weights=weights, title_weight=title_weight)).hits
            run[qid] = {h.doc_id: float(len(hits) - i) for i, h in enumerate(hits)}
        trial = Trial(d, evaluate(run, self.qrels, (MEASURE,))[MEASURE],
                      time.perf_counter() - t0)
        self.seen[k] = trial
        self.trials.append(trial)
        return trial


def _coordinate_search(score: _Scorer, start: SearchDefaults, passes: int,
                       on_trial: Callable[[Trial, Trial], None] | None) -> tuple[Trial, Trial]:
    """(baseline, best): each coordinate in turn from the best so far, until a whole pass
    changes nothing or ``passes`` are done."""
    baseline = best = score(start)
    if on_trial is not None:
        on_trial(baseline, best)
    for _ in range(passes):
        before = best
        for name in COORDINATES:
            for d in _moves(name, best.defaults):
                fresh = score.fresh(d)
                trial = score(d)
                if trial.score > best.score + 1e-12:
                    best = trial
                if fresh and on_trial is not None:
                    on_trial(trial, best)
        if best is before:  # a coordinate-wise optimum
            break
    return baseline, best


def tune(engine: Engine, collection: str, dataset: Path, *, split: str = "train",
         max_queries: int | None = None, passes: int = 2, store: bool = True,
         on_trial: Callable[[Trial, Trial], None] | None = None) -> TuneReport:
    """Coordinate search of the search defaults on a labelled split (module doc). Stores
    the winner as a new revision when it beats the current defaults on train (and
    ``store``); ``on_trial(trial, best so far)`` follows the progress."""
    if passes < 1:
        raise InputError(f"passes must be at least 1, got {passes}")
    if max_queries is not None and max_queries < 1:
        raise InputError(f"max_queries must be at least 1, got {max_queries}")
    started = time.perf_counter()
    handle = engine.collection(collection)
    key = collection_key(handle.name)
    queries, qrels = load_labelled(engine, dataset, split, max_queries)
    handle.embedder.embed(list(queries.values()), InputType.QUERY)  # once, into the cache
    score = _Scorer(engine, handle, queries, qrels)
    baseline, best = _coordinate_search(score, search_defaults(engine, handle), passes,
                                        on_trial)
    stored = None
    if store and best.score > baseline.score:
        stored = store_defaults(engine, key, best.defaults.settings(), {
            "by": "tune", "dataset": str(dataset), "split": split, "queries": len(queries),
            "version": handle.version, MEASURE: round(best.score, 6),
            f"baseline_{MEASURE}": round(baseline.score, 6)})
        best = replace(best, defaults=replace(best.defaults, revision=stored.revision))
    return TuneReport(collection=key, version=handle.version, dataset=str(dataset),
                      split=split, queries=len(queries), baseline=baseline, best=best,
                      trials=score.trials, stored=stored, seconds=time.perf_counter() - started)


__all__ = ["DefaultsHistory", "SearchDefaults", "Trial", "TuneReport", "builtin_defaults",
           "checked", "collection_key", "defaults_history", "revert_defaults",
           "search_defaults", "store_defaults", "tune"]
