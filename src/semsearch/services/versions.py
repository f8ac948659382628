"""Model versioning: re-index a collection into a shadow version, gate it on labelled
queries, and swap the collection's name over atomically (or roll back).

A collection name is an alias for one version (``docs``, ``docs@v2``, ...). ``reindex``
builds the next version from the active one's canonical documents with another model or
chunker while the active version keeps serving; vectors already in the embedding cache
under the new identity are reused, so a chunker change re-embeds only the chunks that
changed. The swap is one compare-and-swap in the store; the previous version is kept (and
listed) until dropped, so ``rollback`` is the same swap backwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semsearch.core.chunking import ChunkerConfig, chunk_document
from semsearch.core.types import Document, InputType, Mode
from semsearch.errors import InputError, NotFoundError
from semsearch.runtime.embedding import CachedEmbedder
from semsearch.runtime.engine import Engine
from semsearch.runtime.naming import base_version, next_version, version_of
from semsearch.services.collections import versions
from semsearch.services.ingest import IndexReport, delete_documents, index_documents
from semsearch.services.sync import collection_lock

SAMPLE_TEXTS = 32  # texts embedded (uncached) to time the new model for the estimate


@dataclass
class ReindexPlan:
    collection: str
    active: str
    target: str
    identity: dict[str, Any]
    chunker: dict[str, Any]
    documents: int = 0
    chunks: int = 0
    tokens: int = 0
    cached_chunks: int = 0
    tokens_to_embed: int = 0
    price_per_mtok: float = 0.0
    estimated_cost: float = 0.0
    estimated_seconds: float | None = None
    same_identity: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateResult:
    dataset: str
    tolerance: float
    modes: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> old/new/delta
    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReindexReport:
    collection: str
    previous: str
    version: str
    plan: ReindexPlan
    build: IndexReport
    caught_up: int = 0
    gate: GateResult | None = None
    swapped: bool = False
    seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["plan"] = self.plan.to_dict()
        out["build"] = self.build.to_dict()
        out["gate"] = self.gate.to_dict() if self.gate else None
        return out


def target_embedder(engine: Engine, model: str | None) -> CachedEmbedder:
    """The embedder to re-index with: ``model`` (a local model's name, or an API model on
    the configured endpoint), else the configured embedder."""
    if not model:
        return engine.embedder
    built = engine.embedders.for_model(model)
    if built.identity == engine.embedder.identity:
        return engine.embedder
    return CachedEmbedder(built, engine.embedder.cache,
                          price_per_mtok=engine.settings.embedder_price_per_mtok
                          if built.identity.provider != "local" else 0.0)


def _chunker(current: dict[str, Any], overrides: dict[str, Any] | None,
             max_tokens: int) -> ChunkerConfig:
    merged = {**current, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    cfg = ChunkerConfig.from_dict(merged)
    if cfg.max_tokens > max_tokens:  # a smaller model window: chunks must fit it
        merged["max_tokens"] = max_tokens
        merged["overlap_tokens"] = min(cfg.overlap_tokens, max_tokens // 4)
        cfg = ChunkerConfig.from_dict(merged)
    return cfg


def _next_version(engine: Engine, name: str) -> str:
    return next_version(name, [i.name for i in versions(engine, name)])


def plan_reindex(engine: Engine, collection: str, model: str | None = None,
                 chunker: dict[str, Any] | None = None,
                 embedder: CachedEmbedder | None = None) -> ReindexPlan:
    """What a re-index would do and cost, without writing anything: chunks and tokens under
    the new chunker, how many are already in the cache under the new identity, the price of
    the rest, and the time, from embedding a small uncached sample with the new model."""
    if "@" in collection:
        raise InputError("re-index a collection by its name, not a version")
    info = engine.collection(collection).info
    active = info.name
    emb = embedder or target_embedder(engine, model)
    ident = emb.identity
    cfg = _chunker(dict(info.chunker), chunker, ident.max_tokens)
    plan = ReindexPlan(collection=collection, active=active,
                       target=_next_version(engine, collection), identity=ident.to_dict(),
                       chunker=cfg.to_dict(), price_per_mtok=emb.price_per_mtok,
                       same_identity=ident == info.identity and cfg.to_dict() == dict(
                           info.chunker))
    tokenizer = emb.tokenizer
    misses: list[str] = []
    for docs in engine.store.iter_documents(active):
        plan.documents += len(docs)
        texts = [c.embed_text for d in docs for c in chunk_document(d, tokenizer, cfg)]
        keys = [emb.cache_key(InputType.PASSAGE, t) for t in texts]  # adapted: the base keys
        hits = emb.cache.get_many(keys)
        for text, key in zip(texts, keys, strict=True):
            n = emb.count_tokens(text)
            plan.chunks += 1
            plan.tokens += n
            if key in hits:
                plan.cached_chunks += 1
            else:
                plan.tokens_to_embed += n
                if len(misses) < SAMPLE_TEXTS:
                    misses.append(text)
    plan.estimated_cost = round(plan.tokens_to_embed * emb.price_per_mtok / 1e6, 6)
    plan.estimated_seconds = _estimate_seconds(emb, misses, plan)
    return plan


def _estimate_seconds(emb: CachedEmbedder, sample: list[str], plan: ReindexPlan) -> float | None:
    """Local models: time an uncached sample. Paid APIs are not called for an estimate:
    their time is unknown (None) until a run has measured them."""
    if plan.tokens_to_embed == 0:
        return 0.0
    if emb.identity.provider != "local" or not sample:
        return None
    emb.embedder.embed(sample[:4], InputType.PASSAGE)  # load the model outside the timing
    started = time.perf_counter()
    emb.embedder.embed(sample, InputType.PASSAGE)  # uncached: the model's own speed
    took = time.perf_counter() - started
    sample_tokens = sum(emb.count_tokens(t) for t in sample)
    return round(took * plan.tokens_to_embed / max(sample_tokens, 1), 1)


def _documents(engine: Engine, collection: str) -> Iterator[Document]:
    for batch in engine.store.iter_documents(collection):
        yield from batch


def _catch_up(engine: Engine, active: str, shadow: str) -> int:
    """Apply writes the active version received while the shadow was built."""
    src = {d: h for d, h in _hashes(engine, active)}
    dst = {d: h for d, h in _hashes(engine, shadow)}
    changed = [d for d, h in src.items() if dst.get(d) != h]
    gone = [d for d in dst if d not in src]
    if changed:
        docs = [Document(id=d, title=row["title"], text=row["text"], metadata=row["metadata"])
                for d in changed for row in [engine.store.get_document(active, d)]]
        index_documents(engine, shadow, docs)
    if gone:
        delete_documents(engine, shadow, gone)
    return len(changed) + len(gone)


def _hashes(engine: Engine, collection: str) -> Iterator[tuple[str, str]]:
    ids = engine.store.all_doc_ids(collection)
    for start in range(0, len(ids), 1000):
        yield from engine.store.content_hashes(collection, ids[start:start + 1000]).items()


def evaluate_gate(engine: Engine, old: str, new: str, dataset: Path, tolerance: float,
                  modes: Sequence[Mode], split: str = "test",
                  on_progress: Callable[[int], None] | None = None) -> GateResult:
    from semsearch.services.evaluate import evaluate_collection

    gate = GateResult(dataset=str(dataset), tolerance=tolerance)
    before = {r.mode: r.metrics["ndcg@10"] for r in evaluate_collection(
        engine, old, dataset, modes, split=split, on_progress=on_progress)}
    after = {r.mode: r.metrics["ndcg@10"] for r in evaluate_collection(
        engine, new, dataset, modes, split=split, on_progress=on_progress)}
    for mode in before:
        delta = after[mode] - before[mode]
        gate.modes[mode] = {"old_ndcg@10": round(before[mode], 4),
                            "new_ndcg@10": round(after[mode], 4), "delta": round(delta, 4)}
        if delta < -tolerance:
            gate.passed = False
    return gate


def reindex(engine: Engine, collection: str, *, model: str | None = None,
            chunker: dict[str, Any] | None = None, gate: Path | None = None,
            tolerance: float = 0.01, gate_modes: Sequence[Mode] = tuple(Mode),
            gate_split: str = "test", swap: bool = True,
            embedder: CachedEmbedder | None = None,
            on_progress: Callable[[int], None] | None = None) -> ReindexReport:
    """Build the next version of ``collection``, gate it, and swap the name over to it.
    Holds the collection's sync lock so no sync writes to the old version meanwhile;
    API writes that land during the build are copied over before the swap. ``embedder``
    (a library caller's own, already wrapped in the cache) takes the place of ``model``."""
    started = time.perf_counter()
    # A gate that cannot run should fail before the build, not after (reads the qrels too).
    if gate is not None and not engine.corpora.queries(gate, gate_split):
        raise InputError(f"{gate}: no labelled queries for split {gate_split!r}")
    emb = embedder or target_embedder(engine, model)
    with collection_lock(engine, collection):
        plan = plan_reindex(engine, collection, model, chunker, embedder=emb)
        active = plan.active
        shadow = plan.target
        engine.adopt_embedder(emb)
        engine.store.create_collection(shadow, emb.identity, plan.chunker)
        try:
            build: IndexReport = index_documents(engine, shadow, _documents(engine, active),
                                                 on_progress=on_progress)
            caught_up = 0
            for _ in range(3):  # until a pass finds nothing new
                n = _catch_up(engine, active, shadow)
                caught_up += n
                if n == 0:
                    break
        except BaseException:
            from semsearch.services.collections import drop_collection

            drop_collection(engine, shadow)  # a half-built shadow is useless: leave nothing
            raise
        report = ReindexReport(collection=collection, previous=active, version=shadow,
                               plan=plan, build=build, caught_up=caught_up)
        if gate is not None:
            report.gate = evaluate_gate(engine, active, shadow, gate, tolerance, gate_modes,
                                        gate_split)
        if not swap:
            report.message = (f"built {shadow}; {collection!r} still serves {active} "
                              f"(activate with: semsearch activate -c {collection} "
                              f"--version {version_of(shadow)[1]})")
        elif report.gate is not None and not report.gate.passed:
            report.message = (f"gate failed: nDCG@10 dropped by more than {tolerance} in "
                              f"{', '.join(m for m, r in report.gate.modes.items() if r['delta'] < -tolerance)}"  # noqa: E501
                              f"; {collection!r} still serves {active}; {shadow} is kept for "
                              f"inspection (semsearch drop {shadow})")
        else:
            _swap(engine, collection, shadow, expected=active)
            report.swapped = True
            report.message = (f"{collection!r} now serves {shadow}; {active} is kept "
                              f"(semsearch rollback -c {collection})")
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _swap(engine: Engine, name: str, target: str, expected: str) -> None:
    alias = engine.store.get_alias(name)
    history = list(alias[1]) if alias else []
    history = [h for h in history if h != target] + [expected]
    engine.store.set_alias(name, target, expected, history)
    engine.mirror_alias(name)


def activate(engine: Engine, collection: str, version: int | str) -> dict[str, str]:
    """Point the name at a kept version (any one, not just the previous)."""
    target = base_version(version if isinstance(version, str) and "@" in version
                          else f"{collection}@v{version}")
    engine.store.get_collection(target)
    with collection_lock(engine, collection):
        active = engine.resolve(collection)
        if active == target:
            raise InputError(f"{collection!r} already serves {target}")
        engine.embedder_for(engine.store.get_collection(target))  # servable before swapping
        _swap(engine, collection, target, expected=active)
    return {"collection": collection, "active": target, "previous": active}


def rollback(engine: Engine, collection: str) -> dict[str, str]:
    """Back to the version served before the last swap; the current one is kept."""
    alias = engine.store.get_alias(collection)
    if alias is None or not alias[1]:
        raise NotFoundError(f"collection {collection!r} has no previous version to roll "
                            "back to")
    target, history = alias
    previous = history[-1]
    engine.store.get_collection(previous)
    with collection_lock(engine, collection):
        engine.embedder_for(engine.store.get_collection(previous))
        engine.store.set_alias(collection, previous, target, [*history[:-1], target])
        engine.mirror_alias(collection)
    return {"collection": collection, "active": previous, "previous": target}
