"""Real corpora end to end: Medline in the default run, SciFact's quality bars as a slow test.

The Medline engine is built once for the module (about a minute on two cores)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval

from semsearch.adapters.sources import beir
from semsearch.adapters.sources.files import iter_documents
from semsearch.adapters.vectors.local import LocalVectorIndex
from semsearch.config import Settings
from semsearch.core.metrics import evaluate
from semsearch.core.types import InputType, Mode
from semsearch.runtime.engine import Engine
from semsearch.services.evaluate import evaluate_collection
from semsearch.services.ingest import index_documents
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine
from tests.conftest import DATA, shared_embedding_cache

MEDLINE = DATA / "medline"


@pytest.fixture(scope="module")
def medline(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Engine]:
    home = tmp_path_factory.mktemp("medline-home")
    engine = open_engine(Settings(home=home, embedder_threads=2,
                                  cache_url=shared_embedding_cache()))
    report = index_documents(engine, "medline", iter_documents(MEDLINE))
    assert report.documents == 1033 and report.chunks >= 1033
    yield engine
    engine.close()


def test_engine_run_scores_equal_pytrec_eval(medline: Engine) -> None:
    queries = beir.load_queries(MEDLINE)
    qrels = beir.load_qrels(MEDLINE)
    run = {}
    for qid, text in queries.items():
        hits = search(medline, "medline", SearchRequest(text, mode=Mode.HYBRID, k=100)).hits
        run[qid] = {h.doc_id: float(len(hits) - i) for i, h in enumerate(hits)}
    ours = evaluate(run, qrels, ("ndcg@10", "recall@100", "map@100"))
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100", "map_cut_100"})
    ref = ev.evaluate(run)
    judged = [q for q in qrels if any(r > 0 for r in qrels[q].values())]
    for ours_name, ref_name in (("ndcg@10", "ndcg_cut_10"), ("recall@100", "recall_100"),
                                ("map@100", "map_cut_100")):
        want = float(np.mean([ref[q][ref_name] for q in judged]))
        assert ours[ours_name] == pytest.approx(want, abs=1e-9)
    assert ours["ndcg@10"] > 0.4  # a broken ranking scores near 0


def test_hybrid_is_at_least_as_good_as_either_mode(medline: Engine) -> None:
    reports = {r.mode: r.metrics for r in evaluate_collection(
        medline, "medline", MEDLINE, [Mode.KEYWORD, Mode.DENSE, Mode.HYBRID])}
    assert reports["keyword"]["ndcg@10"] > 0.3 and reports["dense"]["ndcg@10"] > 0.3
    assert reports["hybrid"]["ndcg@10"] >= max(reports["keyword"]["ndcg@10"],
                                               reports["dense"]["ndcg@10"]) - 0.02


def test_hnsw_recall_against_exact_on_real_vectors(medline: Engine, tmp_path: Path) -> None:
    chunks = [sc for batch in medline.store.iter_chunks("medline") for sc in batch]
    vectors = medline.embedder.embed([sc.chunk.embed_text for sc in chunks], InputType.PASSAGE)
    labels = [sc.label for sc in chunks]
    exact = LocalVectorIndex(tmp_path / "exact", 384, ann_threshold=10**9)
    ann = LocalVectorIndex(tmp_path / "ann", 384, ann_threshold=0)
    exact.add(labels, vectors)
    ann.add(labels, vectors)
    queries = list(beir.load_queries(MEDLINE).values())
    qv = medline.embedder.embed(queries, InputType.QUERY)
    recalls = []
    for q in qv:
        truth = {lb for lb, _ in exact.search(q, 10)}
        got = {lb for lb, _ in ann.search(q, 10)}
        recalls.append(len(truth & got) / 10)
    assert ann.ann_built
    assert float(np.mean(recalls)) >= 0.98


@pytest.mark.slow
def test_scifact_quality_bars(tmp_path: Path, models_dir: Path) -> None:
    engine = open_engine(Settings(home=tmp_path, embedder_threads=2))
    try:
        index_documents(engine, "scifact", iter_documents(DATA / "scifact"))
        got = {r.mode: r.metrics["ndcg@10"] for r in evaluate_collection(
            engine, "scifact", DATA / "scifact", [Mode.KEYWORD, Mode.DENSE, Mode.HYBRID])}
    finally:
        engine.close()
    assert got["keyword"] >= 0.66 and got["dense"] >= 0.63 and got["hybrid"] >= 0.69, got
