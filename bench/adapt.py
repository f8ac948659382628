"""Domain adaptation on a BEIR corpus: nDCG@10 before and after ``semsearch adapt``, dense and
hybrid, measured in the same run.

    python bench/adapt.py ../shared/data/scifact --home /tmp/adapt-home

1. index the corpus with the configured (default) model into ``--home`` (kept between runs:
   a second run reads every vector from its embedding cache);
2. ``adapt`` the collection on the train split (the query adapter; documents are not
   re-embedded), which re-indexes to the adapted identity from the cache and gates it on
   the test split: the gate's old/new nDCG@10 are the before/after figures;
3. roll back, so the next run starts from the base model again.

``--sweep`` first trains several settings on the train split alone and picks the one with the
best held-out nDCG@10 (queries of the train split kept aside), never looking at the test
split; the test split's doc-level nDCG@10 of each is printed for information only."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.adapter import AdapterConfig, LinearAdapter, ndcg_at_10, train_linear_adapter
from semsearch.core.types import InputType, Mode
from semsearch.errors import NotFoundError
from semsearch.runtime.engine import Engine
from semsearch.services.adapt import TrainingData, adapt, base_embedder, training_data
from semsearch.services.evaluate import evaluate_collection
from semsearch.services.ingest import index_documents
from semsearch.services.versions import rollback
from semsearch.wiring import open_engine

GRID = [  # (temperature, l2, learning rate): what the sweep tries
    (0.05, 0.01, 0.001), (0.05, 0.1, 0.001), (0.05, 0.001, 0.001), (0.02, 0.01, 0.001),
    (0.1, 0.01, 0.001), (0.05, 0.01, 0.003),
]


def _test_ndcg(engine: Engine, name: str, data: Path, adapter_w: np.ndarray,
               td: TrainingData) -> float:
    """Doc-level dense nDCG@10 on the test split (for information: not used to choose)."""
    queries = engine.corpora.queries(data, "test")
    qrels = engine.corpora.qrels(data, "test")
    index = {d: i for i, d in enumerate(td.doc_ids)}
    qids = [q for q in queries if any(d in index for d in qrels.get(q, {}))]
    emb = base_embedder(engine, name)
    raw = emb.embed([queries[q] for q in qids], InputType.QUERY)
    qv = LinearAdapter(adapter_w.astype(np.float32), "x").apply(raw)
    pos = [[index[d] for d, g in qrels[q].items() if g > 0 and d in index] for q in qids]
    return ndcg_at_10(qv.astype(np.float64), pos, td.docs.astype(np.float64))


def _breakdown(engine: Engine, data: Path, old: str, new: str) -> None:
    """Test queries split by whether a relevant document of theirs is also relevant to some
    training query: on SciFact most are, and an adapter can learn which documents get asked
    about; the other group shows what carries over to documents it never saw judged."""
    seen = {d for judged in engine.corpora.qrels(data, "train").values() for d in judged}
    qrels = engine.corpora.qrels(data, "test")
    groups = {"relevant doc seen in train": [q for q, j in qrels.items() if set(j) & seen],
              "no relevant doc seen in train": [q for q, j in qrels.items()
                                                if not set(j) & seen]}
    before = {m.mode: m.per_query for m in evaluate_collection(
        engine, old, data, (Mode.DENSE, Mode.HYBRID))}
    after = {m.mode: m.per_query for m in evaluate_collection(
        engine, new, data, (Mode.DENSE, Mode.HYBRID))}
    for label, qids in groups.items():
        for mode in before:
            b = np.mean([before[mode].get(q, {}).get("ndcg@10", 0.0) for q in qids])
            a = np.mean([after[mode].get(q, {}).get("ndcg@10", 0.0) for q in qids])
            print(f"  {label} ({len(qids)} queries) {mode:<7} {b:.4f} -> {a:.4f} "
                  f"({a - b:+.4f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--home", type=Path, default=Path("/tmp/semsearch-adapt-bench"))
    ap.add_argument("--collection", default="scifact")
    ap.add_argument("--temperature", type=float, default=AdapterConfig.temperature)
    ap.add_argument("--l2", type=float, default=AdapterConfig.l2)
    ap.add_argument("--learning-rate", type=float, default=AdapterConfig.learning_rate)
    ap.add_argument("--max-steps", type=int, default=AdapterConfig.max_steps)
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    engine = open_engine(Settings(home=args.home))
    try:
        try:
            engine.collection(args.collection)
        except NotFoundError:
            started = time.perf_counter()
            built = index_documents(engine, args.collection, iter_documents(args.data))
            print(f"indexed {built.documents} documents, {built.chunks} chunks in "
                  f"{time.perf_counter() - started:.0f} s")
        if engine.resolve(args.collection) != args.collection:
            rollback(engine, args.collection)  # a previous run adapted it: start from the base
        cfg = AdapterConfig(temperature=args.temperature, l2=args.l2,
                            learning_rate=args.learning_rate, max_steps=args.max_steps)
        if args.sweep:
            td = training_data(engine, args.collection, args.data, "train",
                               base_embedder(engine, args.collection))
            best = None
            for temp, l2, lr in GRID:
                trial = replace(cfg, temperature=temp, l2=l2, learning_rate=lr)
                started = time.perf_counter()
                w, tr = train_linear_adapter(td.queries, td.positives, td.docs, trial)
                test = _test_ndcg(engine, args.collection, args.data, w, td)
                print(f"  T={temp} l2={l2} lr={lr}: held-out {tr.holdout_ndcg_before:.4f} -> "
                      f"{tr.holdout_ndcg_after:.4f} (step {tr.best_step}/{tr.steps}), "
                      f"test doc-level dense {test:.4f}, {time.perf_counter() - started:.0f} s")
                if best is None or tr.holdout_ndcg_after > best[0]:
                    best = (tr.holdout_ndcg_after, trial)
            assert best is not None
            cfg = best[1]
            print(f"chosen by held-out nDCG@10: T={cfg.temperature} l2={cfg.l2} "
                  f"lr={cfg.learning_rate}")
        started = time.perf_counter()
        report = adapt(engine, args.collection, args.data, config=cfg,
                       gate_modes=(Mode.DENSE, Mode.HYBRID), tolerance=1.0)
        took = time.perf_counter() - started
        r = report.reindex
        assert r is not None and r.gate is not None
        tr = report.train
        print(f"adapter {report.fingerprint}: {tr.pairs} pairs, {tr.queries} train queries "
              f"({tr.holdout_queries} held out), held-out nDCG@10 {tr.holdout_ndcg_before:.4f} "
              f"-> {tr.holdout_ndcg_after:.4f} at step {tr.best_step}/{tr.steps}; re-index "
              f"{r.build.chunks} chunks, {r.build.embedded} embedded; whole run {took:.0f} s")
        print(f"SciFact-style test split ({args.data.name}), nDCG@10, same run:")
        for mode, m in r.gate.modes.items():
            print(f"  {mode:<7} before {m['old_ndcg@10']:.4f}  after {m['new_ndcg@10']:.4f}  "
                  f"delta {m['delta']:+.4f}  ratio {m['new_ndcg@10'] / m['old_ndcg@10']:.3f}")
        if report.swapped:
            # the name now points at the new version: the old one by its version name
            old = r.previous if "@" in r.previous else f"{r.previous}@v1"
            _breakdown(engine, args.data, old, r.version)
        rollback(engine, args.collection)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
