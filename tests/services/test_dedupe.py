"""Near-duplicate clusters on the real model and a real index, with planted duplicates:
the exact path and the ANN path (forced) find the same clusters and nothing else."""

from __future__ import annotations

import math

import pytest

from semsearch.errors import InputError, NotFoundError
from semsearch.runtime.engine import Engine
from semsearch.services.dedupe import find_duplicates
from semsearch.services.ingest import delete_documents, index_documents
from tests.services.relevance_corpus import CLUSTERS, DISTINCT, DOCS


@pytest.fixture
def indexed(engine: Engine) -> Engine:
    index_documents(engine, "c", DOCS)
    return engine


def _sets(report: object) -> list[set[str]]:
    return sorted(({m.id for m in c.members} for c in report.clusters),  # type: ignore[attr-defined]
                  key=lambda s: sorted(s))


@pytest.mark.parametrize("how", [{"method": "exact"}, {"method": "ann"},
                                 {"exact_limit": 0}, {}])
def test_planted_duplicates_cluster_and_distinct_documents_do_not(indexed: Engine,
                                                                  how: dict[str, object]) -> None:
    report = find_duplicates(indexed, "c", 0.95, **how)  # type: ignore[arg-type]
    assert report.method == ("ann" if how in ({"method": "ann"}, {"exact_limit": 0})
                             else "exact")
    assert _sets(report) == CLUSTERS
    assert not DISTINCT & {m.id for c in report.clusters for m in c.members}
    assert report.clusters_total == 3 and report.duplicates == 4
    assert report.documents == len(DOCS)
    biggest = report.clusters[0]  # largest first
    assert {m.id for m in biggest.members} == {"starter", "starter-copy", "starter-each"}
    assert biggest.members[0].id in ("starter", "starter-copy")  # the medoid leads
    assert biggest.members[0].similarity == 1.0
    assert biggest.max_similarity == pytest.approx(1.0, abs=1e-5)  # the exact copy
    assert 0.95 <= biggest.min_similarity < biggest.max_similarity
    assert biggest.pair_count == 3 and len(biggest.pairs) == 3
    assert [p[2] for p in biggest.pairs] == sorted((p[2] for p in biggest.pairs), reverse=True)
    d = report.to_dict()
    assert d["clusters"][0]["size"] == 3 and d["clusters"][0]["representative"] in (
        "starter", "starter-copy")


def test_exact_and_ann_agree_on_similarities(indexed: Engine) -> None:
    exact = find_duplicates(indexed, "c", 0.9, method="exact").to_dict()
    ann = find_duplicates(indexed, "c", 0.9, method="ann").to_dict()
    for e, a in zip(exact["clusters"], ann["clusters"], strict=True):
        assert e["members"] == a["members"]
        assert math.isclose(e["min_similarity"], a["min_similarity"], abs_tol=1e-5)


def test_a_lower_threshold_joins_related_documents(indexed: Engine) -> None:
    report = find_duplicates(indexed, "c", 0.65)
    starter = next(c for c in report.clusters if "starter" in {m.id for m in c.members})
    assert "flour" in {m.id for m in starter.members}  # ~0.70: related, joined at 0.65
    assert starter.min_similarity < 0.75


def test_limit_keeps_the_largest_and_counts_all(indexed: Engine) -> None:
    report = find_duplicates(indexed, "c", 0.95, limit=1)
    assert len(report.clusters) == 1 and report.clusters_total == 3
    assert len(report.clusters[0].members) == 3


def test_a_deleted_copy_leaves_its_cluster(indexed: Engine) -> None:
    delete_documents(indexed, "c", ["oven-230"])
    for method in ("exact", "ann"):
        assert {"oven", "oven-230"} not in _sets(find_duplicates(indexed, "c", 0.95,
                                                                 method=method))


def test_empty_collection_and_no_duplicates(engine: Engine) -> None:
    index_documents(engine, "one", [DOCS[0]])
    for method in ("exact", "ann"):
        assert find_duplicates(engine, "one", 0.95, method=method).clusters == []


@pytest.mark.parametrize(("kw", "needle"), [
    ({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold"),
    ({"threshold": float("nan")}, "threshold"), ({"method": "fast"}, "method"),
    ({"neighbours": 0}, "neighbours"), ({"exact_limit": -1}, "exact_limit")])
def test_bad_options_are_refused(indexed: Engine, kw: dict[str, object], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        find_duplicates(indexed, "c", **kw)  # type: ignore[arg-type]


def test_unknown_collection(engine: Engine) -> None:
    with pytest.raises(NotFoundError):
        find_duplicates(engine, "nope")
