"""``semsearch eval --report``: the HTML page of an evaluation, from a real index of a small
slice of SciFact (real abstracts, real judgments, the real model), checked against the
service's own numbers: the modes, the means, the per-query wins and losses with their query
texts, escaping of a query written as HTML, and nothing fetched from anywhere."""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Iterator
from html import escape
from pathlib import Path

import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.metrics import DEFAULT_MEASURES
from semsearch.core.report import diff_queries, hybrid_diff, render_report
from semsearch.core.types import Mode
from semsearch.errors import NotFoundError
from semsearch.runtime.engine import Engine
from semsearch.services.evaluate import Evaluation, evaluate_collection, evaluate_collections
from semsearch.services.ingest import delete_documents, index_documents
from semsearch.services.versions import reindex
from semsearch.wiring import open_engine
from tests.conftest import DATA, shared_embedding_cache

SCIFACT = DATA / "scifact"
HOSTILE = '<script>alert("x")</script> & '
MODES = [Mode.KEYWORD, Mode.DENSE, Mode.HYBRID]


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]{4,}", text.lower())}


def scifact_slice(root: Path, queries: int = 24, distractors: int = 8) -> Path:
    """A BEIR folder with the first ``queries`` judged SciFact test queries, the documents
    they judge, and for each query the ``distractors`` unjudged documents sharing the most
    words with it (so the modes disagree, as on the full corpus). The first query's text is
    prefixed with HTML, as a hostile or careless dataset might have it."""
    folder = root / "scifact-slice"
    (folder / "qrels").mkdir(parents=True)
    lines = (SCIFACT / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    qrels: dict[str, list[tuple[str, str]]] = {}
    for line in lines[1:]:
        qid, doc, score = line.split("\t")
        if len(qrels) < queries or qid in qrels:
            qrels.setdefault(qid, []).append((doc, score))
    texts = {row["_id"]: row["text"] for row in map(
        json.loads, (SCIFACT / "queries.jsonl").read_text(encoding="utf-8").splitlines())
        if row["_id"] in qrels}
    corpus = (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in corpus]
    words = [_words(row["title"] + " " + row["text"]) for row in rows]
    ids = [row["_id"] for row in rows]
    keep = {doc for pairs in qrels.values() for doc, _ in pairs}
    for text in texts.values():
        q = _words(text)
        ranked = heapq.nsmallest(distractors, range(len(corpus)),
                                 key=lambda i: (-len(q & words[i]), i))
        keep.update(ids[i] for i in ranked)
    (folder / "corpus.jsonl").write_text(
        "".join(line + "\n" for line, doc in zip(corpus, ids, strict=True) if doc in keep),
        encoding="utf-8")
    first = next(iter(qrels))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": qid, "text": (HOSTILE if qid == first else "") + text}) + "\n"
        for qid, text in texts.items()), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{d}\t{s}\n" for q, pairs in qrels.items() for d, s in pairs),
        encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scifact_slice(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
            dataset: Path) -> Iterator[Engine]:
    """One engine and index for the module (the tests that change a collection use one of
    their own); vectors come from the tests' shared embedding cache after the first run."""
    engine = open_engine(Settings(home=tmp_path_factory.mktemp("home"), embedder_threads=2,
                                  cache_url=shared_embedding_cache()))
    index_documents(engine, "sf", iter_documents(dataset))
    yield engine
    engine.close()


def _cell(page: str, table_class: str, mode: str, measure: str) -> str:
    table = page[page.index(f"<table class='{table_class}'>"):]
    row = table[table.index(f"<tr data-mode='{mode}'>"):]
    match = re.search(rf"<td data-measure='{re.escape(measure)}'>([^<]*)</td>", row)
    assert match is not None
    return match.group(1)


def test_the_report_shows_the_services_numbers_and_the_per_query_wins_and_losses(
        indexed: Engine, dataset: Path) -> None:
    (run,) = evaluate_collections(indexed, ["sf"], dataset, MODES)
    assert [r.mode for r in run.modes] == ["keyword", "dense", "hybrid"]
    # The per-query scores are the ones the means come from: one implementation.
    same = evaluate_collection(indexed, "sf", dataset, MODES)
    for r, s in zip(run.modes, same, strict=True):
        for m in DEFAULT_MEASURES:
            mean = sum(q[m] for q in r.per_query.values()) / len(r.per_query)
            assert mean == pytest.approx(r.metrics[m], abs=1e-12)
            assert s.metrics[m] == pytest.approx(r.metrics[m], abs=1e-12)
    assert len(run.modes[0].per_query) == 24
    assert run.version == "sf" and run.model == indexed.embedder.identity.model

    page = render_report(run)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for r in run.modes:
        for m in ("ndcg@10", "mrr@10", "recall@100", "map@100"):
            assert _cell(page, "metrics", r.mode, m) == f"{r.metrics[m]:.4f}"
        assert f"{r.latency_ms['p50']:.2f}" in page and f"{r.latency_ms['p99']:.2f}" in page
        # One bar per chart measure and mode, titled with its value.
        bars = re.findall(rf'<rect class="bar" data-mode="{r.mode}"[^>]*><title>[^<]*: '
                          r'([0-9.]+)</title>', page)
        assert bars == [f"{r.metrics[m]:.4f}" for m in ("ndcg@10", "mrr@10", "recall@100")]

    diff = hybrid_diff(run)
    assert diff is not None and diff.other == "hybrid"
    best = max((r for r in run.modes if r.mode != "hybrid"),
               key=lambda r: r.metrics["ndcg@10"])
    assert diff.base == best.mode
    hybrid = run.modes[2]
    n = len(diff.wins) + len(diff.losses) + diff.ties
    assert n == 24 and diff.wins + diff.losses  # the modes disagree on some
    assert [d.delta for d in diff.wins] == sorted((d.delta for d in diff.wins), reverse=True)
    assert [d.delta for d in diff.losses] == sorted(d.delta for d in diff.losses)
    for d in diff.wins + diff.losses:
        assert d.other == hybrid.per_query[d.qid]["ndcg@10"]
        assert d.base == best.per_query[d.qid]["ndcg@10"]
        assert escape(run.queries[d.qid]) in page
    assert f"<b class='pos' data-count='wins'>{len(diff.wins)}</b>" in page
    assert f"<b class='tie' data-count='ties'>{diff.ties}</b>" in page
    assert f"<b class='neg' data-count='losses'>{len(diff.losses)}</b>" in page
    # The winners' table lists them in order, largest gain first.
    wins_table = page[page.index("<table class='queries wins'>"):]
    wins_table = wins_table[:wins_table.index("</table>")]
    assert re.findall(r"<tr data-qid='([^']+)'>", wins_table) == [d.qid for d in diff.wins]

    # The hostile query is shown as text, never as markup; nothing points off the page.
    assert "<script" not in page.lower()
    if any(HOSTILE.strip() in run.queries[d.qid] for d in diff.wins + diff.losses):
        assert escape(HOSTILE) in page
    assert not re.search(r"https?://", page)
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:)""", page)
    assert "@import" not in page and "url(" not in page


def test_every_query_text_is_escaped(indexed: Engine, dataset: Path) -> None:
    (run,) = evaluate_collections(indexed, ["sf"], dataset, [Mode.KEYWORD, Mode.HYBRID])
    hostile = next(q for q, t in run.queries.items() if t.startswith(HOSTILE))
    # Make the hostile query a certain row: give hybrid a win there.
    hybrid = run.modes[1]
    hybrid.per_query[hostile] = {**hybrid.per_query[hostile],
                                 "ndcg@10": run.modes[0].per_query[hostile]["ndcg@10"] + 0.5}
    page = render_report(run)
    assert escape(run.queries[hostile]) in page
    assert "<script" not in page.lower() and 'alert("x")' not in page


def test_before_and_after_of_a_new_version(indexed: Engine, dataset: Path) -> None:
    # A second version (vectors from the cache), then documents deleted from it: the
    # queries that judged them can only lose against the first version.
    index_documents(indexed, "sfv", iter_documents(dataset))
    reindex(indexed, "sfv")
    qrels = indexed.corpora.qrels(dataset, "test")
    gone = sorted({doc for q in list(qrels)[:6] for doc in qrels[q]})
    assert delete_documents(indexed, "sfv", gone) == len(gone)
    after, before = evaluate_collections(indexed, ["sfv", "sfv@v1"], dataset, MODES)
    assert (after.version, before.version) == ("sfv@v2", "sfv")
    page = render_report(after, before)
    assert "<table class='metrics compare'>" in page and "id='before-after'" in page
    table = page[page.index("<table class='metrics compare'>"):]
    for a in after.modes:
        b = next(r for r in before.modes if r.mode == a.mode)
        row = table[table.index(f"<tr data-mode='{a.mode}'>"):]
        row = row[:row.index("</tr>")]
        delta = a.metrics["ndcg@10"] - b.metrics["ndcg@10"]
        shown = "0.0000" if abs(delta) <= 1e-9 else f"{delta:+.4f}"
        assert (f"<td>{b.metrics['ndcg@10']:.4f}</td><td>{a.metrics['ndcg@10']:.4f}</td>"
                f"<td class=") in row and f">{shown}</td>" in row
        diff = diff_queries(b.per_query, a.per_query, after.queries, base_label="before",
                            other_label="after")
        summary = page[page.index("<table class='summary'>"):]
        line = summary[summary.index(f"<tr data-mode='{a.mode}'>"):]
        line = line[:line.index("</tr>")]
        assert (f"<td class='pos'>{len(diff.wins)}</td><td class='tie'>{diff.ties}</td>"
                f"<td class='neg'>{len(diff.losses)}</td>") in line
        for d in diff.wins + diff.losses:
            assert escape(after.queries[d.qid]) in page
    assert len(re.findall(r'data-series="before"', page)) == 9
    hybrid = diff_queries(before.modes[2].per_query, after.modes[2].per_query,
                          after.queries, base_label="before", other_label="after")
    assert not hybrid.wins and hybrid.losses
    touched = {q for q, judged in qrels.items() if set(judged) & set(gone)}
    assert {d.qid for d in hybrid.losses} <= touched
    assert all(d.other == 0.0 for d in hybrid.losses)  # their relevant documents are gone
    assert not re.search(r"https?://", page)


def test_a_missing_comparison_fails_before_any_query_runs(indexed: Engine,
                                                          dataset: Path) -> None:
    seen: list[int] = []
    with pytest.raises(NotFoundError):
        evaluate_collections(indexed, ["sf", "sf@v7"], dataset, MODES,
                             on_progress=seen.append)
    assert seen == []


def test_json_keeps_per_query_data_for_those_who_ask(indexed: Engine, dataset: Path) -> None:
    (run,) = evaluate_collections(indexed, ["sf"], dataset, [Mode.KEYWORD])
    assert isinstance(run, Evaluation)
    plain = run.to_dict()
    assert "queries" not in plain and set(plain["modes"]) == {"keyword"}
    full = run.to_dict(with_queries=True)
    assert len(full["queries"]) == 24
    qid, row = next(iter(full["queries"].items()))
    assert row["text"] == run.queries[qid]
    assert row["keyword"]["ndcg@10"] == round(run.modes[0].per_query[qid]["ndcg@10"], 4)
    json.dumps(full)
