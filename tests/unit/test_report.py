"""The pure half of the evaluation report: per-query wins, ties and losses, the best single
mode, and a page built from plain data (no index needed)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from semsearch.core.report import best_single, diff_queries, hybrid_diff, render_report


@dataclass
class Scores:
    mode: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    latency_ms: dict[str, float] = field(default_factory=lambda: {"p50": 1.0, "p99": 2.0})


@dataclass
class Run:
    modes: list[Scores]
    queries: dict[str, str]
    collection: str = "c"
    version: str = "c"
    model: str = "m"
    dataset: str = "d"
    split: str = "test"
    fusion: str = "rrf"


def _mode(name: str, scores: dict[str, float]) -> Scores:
    mean = sum(scores.values()) / len(scores)
    return Scores(name, {"ndcg@10": mean, "mrr@10": mean, "recall@100": mean, "map@100": mean},
                {q: {"ndcg@10": v} for q, v in scores.items()})


def test_wins_losses_and_ties_are_sorted_by_the_size_of_the_difference() -> None:
    base = {"a": {"ndcg@10": 0.5}, "b": {"ndcg@10": 0.5}, "c": {"ndcg@10": 0.9},
            "d": {"ndcg@10": 0.3}, "e": {"ndcg@10": 0.7}, "only-base": {"ndcg@10": 1.0}}
    other = {"a": {"ndcg@10": 0.6}, "b": {"ndcg@10": 1.0}, "c": {"ndcg@10": 0.1},
             "d": {"ndcg@10": 0.3 + 1e-12}, "e": {"ndcg@10": 0.6}, "only-other": {}}
    diff = diff_queries(base, other, {"a": "A"}, base_label="x", other_label="y")
    assert [w.qid for w in diff.wins] == ["b", "a"]
    assert [w.qid for w in diff.losses] == ["c", "e"]
    assert diff.ties == 1  # d: equal up to floating-point noise; unshared queries left out
    assert diff.wins[1].text == "A" and diff.wins[0].text == ""
    assert diff.deltas == sorted(diff.deltas, reverse=True) and len(diff.deltas) == 5


def test_the_best_single_mode_is_the_higher_mean_and_hybrid_is_compared_with_it() -> None:
    run = Run([_mode("keyword", {"q1": 1.0, "q2": 0.0}), _mode("dense", {"q1": 0.2,
                                                                        "q2": 0.2}),
               _mode("hybrid", {"q1": 0.5, "q2": 1.0})], {"q1": "one", "q2": "two"})
    assert best_single(run).mode == "keyword"  # type: ignore[union-attr]
    diff = hybrid_diff(run)
    assert diff is not None and diff.base == "keyword"
    assert [(d.qid, d.delta) for d in diff.wins] == [("q2", 1.0)]
    assert [(d.qid, d.delta) for d in diff.losses] == [("q1", -0.5)]
    assert hybrid_diff(Run([run.modes[2]], run.queries)) is None  # nothing to compare with
    assert hybrid_diff(Run(run.modes[:2], run.queries)) is None


def test_a_page_without_hybrid_says_what_it_needs_and_escapes_names() -> None:
    run = Run([_mode("keyword", {"q1": 0.4})], {"q1": "x"}, collection="<b>c</b>",
              model='m"&')
    page = render_report(run)
    assert "Needs hybrid and at least one of keyword and dense" in page
    assert "&lt;b&gt;c&lt;/b&gt;" in page and "<b>c</b>" not in page
    assert "m&quot;&amp;" in page
    assert len(re.findall(r'<rect class="bar"', page)) == 3
    assert not re.search(r"https?://", page)
