"""Domain adaptation of a collection, gated like any model change (``semsearch adapt``).

Learns from labelled (query, relevant document) pairs of a BEIR folder's training split, by
default a query-side linear adapter on the frozen model (``core.adapter``): no document is
re-embedded. The result is a new stamped identity (the base model's, with the adapter's
fingerprint in its revision) whose weights go to the canonical store, and it goes through
the one re-index / gate / swap path of ``services.versions``: a new version is built (its
passage vectors all from the embedding cache), gated on the **test** split (never on the
pairs it trained on), and swapped in if it holds; ``semsearch rollback`` undoes it. Only the
collection adapted changes: the identity is stamped on its new version alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import util
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.core.adapter import (
    AdapterConfig,
    FinetuneConfig,
    FineTuner,
    LinearAdapter,
    TrainReport,
    adapted_identity,
    artifact_key,
    finetune_artifact_key,
    finetuned_identity,
    fingerprint,
    holdout_split,
    ndcg_at_10,
    original_identity,
    split_adapted,
    train_linear_adapter,
)
from semsearch.core.types import InputType, Mode
from semsearch.errors import InputError, SemsearchError
from semsearch.runtime.adaptation import AdaptedCachedEmbedder
from semsearch.runtime.blas import all_blas_threads
from semsearch.runtime.embedding import CachedEmbedder
from semsearch.runtime.engine import Engine
from semsearch.runtime.indexes import doc_vector
from semsearch.services.versions import ReindexReport, reindex

METHODS = ("linear", "finetune")
FINETUNE_INSTALL = "pip install torch==2.13.0 sentence-transformers"


@dataclass
class AdaptReport:
    collection: str
    method: str
    base_identity: dict[str, Any]
    identity: dict[str, Any]
    fingerprint: str
    train: TrainReport
    reindex: ReindexReport | None = None
    seconds: float = 0.0

    @property
    def swapped(self) -> bool:
        return bool(self.reindex and self.reindex.swapped)

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "method": self.method,
                "base_identity": self.base_identity, "identity": self.identity,
                "fingerprint": self.fingerprint, "train": self.train.to_dict(),
                "reindex": self.reindex.to_dict() if self.reindex else None,
                "swapped": self.swapped, "seconds": self.seconds}


@dataclass(frozen=True)
class TrainingData:
    """The training split as vectors: queries (base model), the collection's documents (the
    mean of their chunks' cached passage vectors) and each query's relevant documents."""

    query_ids: list[str]
    queries: np.ndarray
    doc_ids: list[str]
    docs: np.ndarray
    positives: list[list[int]]
    excluded: int = 0  # training queries left out: the gate split asks them too


def base_embedder(engine: Engine, collection: str) -> CachedEmbedder:
    """The embedder of the model under the collection's active version (an adapted version's
    base: a new adapter replaces the old one, it is not stacked on it)."""
    handle = engine.collection(collection)
    split = split_adapted(handle.info.identity)
    if split is None:
        return handle.embedder
    return engine.embedder_for(replace(handle.info, identity=split[0]))


def document_vectors(engine: Engine, version: str, embedder: CachedEmbedder,
                     ) -> tuple[list[str], np.ndarray]:
    """Each document's vector (renormalized mean of its chunks' passage vectors, read through
    the cache: the vectors the collection's index holds), in chunk-label order."""
    by_doc: dict[str, list[np.ndarray]] = {}
    for batch in engine.store.iter_chunks(version, batch=512):
        vecs = embedder.embed([s.chunk.embed_text for s in batch], InputType.PASSAGE)
        for s, v in zip(batch, vecs, strict=True):
            by_doc.setdefault(s.chunk.doc_id, []).append(v)
    ids = list(by_doc)
    if not ids:
        raise InputError(f"collection {version!r} holds no documents to adapt to")
    return ids, np.stack([doc_vector(np.stack(by_doc[d])) for d in ids])


def training_data(engine: Engine, collection: str, train: Path, split: str,
                  embedder: CachedEmbedder, exclude: set[str] | None = None) -> TrainingData:
    """Pairs of ``split`` whose documents are in the collection, as vectors; queries whose
    text is in ``exclude`` (the gate's) are left out."""
    queries, qrels = _training_split(engine, train, split)
    left_out = [q for q, text in queries.items() if text in (exclude or set())]
    queries = {q: text for q, text in queries.items() if q not in set(left_out)}
    version = engine.collection(collection).version
    doc_ids, docs = document_vectors(engine, version, embedder)
    index = {d: i for i, d in enumerate(doc_ids)}
    qids: list[str] = []
    positives: list[list[int]] = []
    for qid, judged in qrels.items():
        pos = [index[d] for d, grade in judged.items() if grade > 0 and d in index]
        if pos and qid in queries:
            qids.append(qid)
            positives.append(pos)
    if not qids:
        judged_docs = {d for j in qrels.values() for d in j}
        raise InputError(
            f"{train}: no labelled pairs for collection {collection!r}: none of the "
            f"{len(judged_docs)} documents judged relevant in qrels/{split}.tsv is in the "
            "collection (was it indexed from this corpus?)")
    qvecs = embedder.embed([queries[q] for q in qids], InputType.QUERY)
    return TrainingData(qids, qvecs, doc_ids, docs, positives, excluded=len(left_out))


def _training_split(engine: Engine, train: Path, split: str,
                    ) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    try:
        return engine.corpora.queries(train, split), engine.corpora.qrels(train, split)
    except SemsearchError as exc:
        raise InputError(f"{train}: no training split {split!r} to adapt on ({exc})") from exc


def _check_gate(engine: Engine, train: Path, split: str, gate: Path,
                gate_split: str) -> set[str]:
    """The gate must judge on queries the adapter never saw: the training split is refused
    as the gate split. Returns the gate's query texts (training queries with the same text
    are left out of training: SciFact's train split repeats two of its test claims)."""
    if gate.resolve() == train.resolve() and gate_split == split:
        raise InputError(f"the gate split {gate_split!r} is the training split: an adapter "
                         "gated on the pairs it learned from always passes; gate on another "
                         "split (--gate-split test)")
    try:
        gate_queries = engine.corpora.queries(gate, gate_split)
    except SemsearchError as exc:
        raise InputError(f"{gate}: no gate split {gate_split!r} ({exc})") from exc
    return set(gate_queries.values())


def adapt(engine: Engine, collection: str, train: Path, *, split: str = "train",
          method: str = "linear", gate: Path | None = None, gate_split: str = "test",
          tolerance: float = 0.01, gate_modes: Sequence[Mode] = tuple(Mode),
          swap: bool = True, config: AdapterConfig | None = None,
          on_progress: Callable[[int], None] | None = None,
          finetuner: FineTuner | None = None, finetune_config: FinetuneConfig | None = None,
          on_train_step: Callable[[int, int], None] | None = None) -> AdaptReport:
    """Train an adapter for ``collection`` on ``train``'s ``split`` pairs, then re-index to
    its identity, gate on ``gate`` (default: the same folder) split ``gate_split``, and swap
    if the gate holds."""
    started = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"unknown adaptation method {method!r}; known: {', '.join(METHODS)}")
    if "@" in collection:
        raise InputError("adapt a collection by its name, not a version")
    if method == "finetune":
        _require_torch()
        if finetuner is None:
            raise InputError("--method finetune needs a fine-tuner (wiring.make_finetuner)")
        return _finetune(engine, collection, train, split=split, gate=gate,
                         gate_split=gate_split, tolerance=tolerance, gate_modes=gate_modes,
                         swap=swap, config=finetune_config or FinetuneConfig(),
                         finetuner=finetuner, on_progress=on_progress,
                         on_train_step=on_train_step, started=started)
    engine.collection(collection)  # NotFoundError, naming the known ones, before any work
    gate_dir = gate or train
    _training_split(engine, train, split)  # the training data's errors come first
    gate_texts = _check_gate(engine, train, split, gate_dir, gate_split)
    base = base_embedder(engine, collection)
    data = training_data(engine, collection, train, split, base, exclude=gate_texts)
    cfg = config or AdapterConfig()
    with all_blas_threads():  # large dense products, no searches to compete with
        weight, report = train_linear_adapter(data.queries, data.positives, data.docs, cfg)
    report.excluded = data.excluded
    adapter = LinearAdapter(weight=weight, base=base.identity.key(), meta={
        "collection": collection, "train": str(train), "split": split,
        "config": cfg.to_dict(), "report": {k: v for k, v in asdict(report).items()
                                            if k != "history"}})
    blob = adapter.to_bytes()
    fp = adapter.fingerprint()
    engine.store.put_artifact(artifact_key(fp), blob)
    identity = adapted_identity(base.identity, fp)
    embedder = AdaptedCachedEmbedder(base, adapter, identity)
    out = AdaptReport(collection=collection, method=method,
                      base_identity=base.identity.to_dict(), identity=identity.to_dict(),
                      fingerprint=fp, train=report)
    return _reindexed(engine, out, embedder, started, gate=gate_dir, tolerance=tolerance,
                      gate_modes=gate_modes, gate_split=gate_split, swap=swap,
                      on_progress=on_progress)


def _reindexed(engine: Engine, out: AdaptReport, embedder: CachedEmbedder, started: float,
               **gating: Any) -> AdaptReport:
    """The model change's common end: re-index to the new identity, gate, maybe swap."""
    out.reindex = reindex(engine, out.collection, embedder=embedder, **gating)
    out.seconds = round(time.perf_counter() - started, 3)
    return out


def _finetune(engine: Engine, collection: str, train: Path, *, split: str, gate: Path | None,
              gate_split: str, tolerance: float, gate_modes: Sequence[Mode], swap: bool,
              config: FinetuneConfig, finetuner: FineTuner,
              on_progress: Callable[[int], None] | None,
              on_train_step: Callable[[int, int], None] | None,
              started: float) -> AdaptReport:
    """``--method finetune``: the same pairs, held-out split and gate exclusion as the
    linear adapter's; the whole model is trained on (query, document text) pairs, stored,
    and re-embeds the corpus under its own identity before the gate."""
    handle = engine.collection(collection)
    gate_dir = gate or train
    _training_split(engine, train, split)
    gate_texts = _check_gate(engine, train, split, gate_dir, gate_split)
    base_id = original_identity(handle.info.identity)
    if base_id.provider != "local" or base_id.model != finetuner.model:
        raise InputError(f"--method finetune fine-tunes the local {finetuner.model}; "
                         f"collection {collection!r} is served by {base_id.key()} (use "
                         "--method linear)")
    base = engine.embedder_for(replace(handle.info, identity=base_id))
    data = training_data(engine, collection, train, split, base, exclude=gate_texts)
    query_texts = engine.corpora.queries(train, split)
    doc_texts = _document_texts(engine, handle.version)
    hold, fit = holdout_split(len(data.query_ids), config.holdout, config.seed)
    pairs = [(query_texts[data.query_ids[i]], doc_texts[data.doc_ids[j]])
             for i in fit for j in data.positives[i]]
    report = TrainReport(queries=len(data.query_ids),
                         pairs=sum(len(p) for p in data.positives), train_queries=len(fit),
                         holdout_queries=len(hold), documents=len(data.doc_ids),
                         excluded=data.excluded)
    pos_hold = [data.positives[i] for i in hold]
    if hold:
        report.holdout_ndcg_before = round(
            ndcg_at_10(data.queries[hold].astype(np.float64), pos_hold,
                       data.docs.astype(np.float64)), 4)
    steps: list[int] = []

    def step(done: int, total: int) -> None:
        steps.append(done)
        if on_train_step is not None:
            on_train_step(done, total)

    blob = finetuner.train(pairs, config, step)
    report.steps = report.best_step = steps[-1] if steps else 0
    report.stopped = f"{config.epochs} epoch(s)" if config.max_steps is None \
        else f"max_steps ({config.max_steps}) or {config.epochs} epoch(s)"
    fp = fingerprint(blob)
    engine.store.put_artifact(finetune_artifact_key(fp), blob)
    identity = finetuned_identity(base.identity, fp)
    # Resolved as any process resolves it: from the store, through the embedder factory.
    embedder = engine.embedder_for(replace(handle.info, identity=identity))
    if hold:  # embeds every chunk under the new identity: the re-index reads the cache
        doc_ids, docs = document_vectors(engine, handle.version, embedder)
        order = {d: k for k, d in enumerate(doc_ids)}
        qv = embedder.embed([query_texts[data.query_ids[i]] for i in hold], InputType.QUERY)
        remapped = [[order[data.doc_ids[j]] for j in p] for p in pos_hold]
        report.holdout_ndcg_after = round(
            ndcg_at_10(qv.astype(np.float64), remapped, docs.astype(np.float64)), 4)
    out = AdaptReport(collection=collection, method="finetune",
                      base_identity=base.identity.to_dict(), identity=identity.to_dict(),
                      fingerprint=fp, train=report)
    return _reindexed(engine, out, embedder, started, gate=gate_dir, tolerance=tolerance,
                      gate_modes=gate_modes, gate_split=gate_split, swap=swap,
                      on_progress=on_progress)


def _document_texts(engine: Engine, version: str) -> dict[str, str]:
    """Each document's text as the model sees it: its first chunk's embedded text (the
    model's window cuts a longer one there anyway)."""
    texts: dict[str, str] = {}
    for batch in engine.store.iter_chunks(version, batch=512):
        for s in batch:
            texts.setdefault(s.chunk.doc_id, s.chunk.embed_text)
    return texts


def _require_torch() -> None:
    missing = [m for m in ("torch", "sentence_transformers") if util.find_spec(m) is None]
    if missing:
        raise InputError(f"--method finetune needs {' and '.join(missing)}, which are not "
                         f"installed: {FINETUNE_INSTALL}")
