"""Recommendations on the real model and a real index: each strategy (history, profile,
central), weights and dislikes, exclusions, unknown ids, and refused input."""

from __future__ import annotations

import pytest

from semsearch.core.filters import parse_filter
from semsearch.errors import InputError, NotFoundError
from semsearch.runtime.engine import Engine
from semsearch.services import doc_vectors
from semsearch.services.ingest import delete_documents, index_documents
from semsearch.services.recommend import Rated, RecommendRequest, recommend
from tests.services.relevance_corpus import DOCS

CARS = {"engine", "tyres", "brakes"}
BAKING = {"starter", "starter-copy", "starter-each", "oven", "oven-230", "flour"}


@pytest.fixture
def indexed(engine: Engine) -> Engine:
    index_documents(engine, "c", DOCS)
    return engine


def _rec(engine: Engine, **kw: object) -> tuple[str, list[str], list[str]]:
    r = recommend(engine, "c", RecommendRequest(**kw))  # type: ignore[arg-type]
    return r.strategy, [h.doc_id for h in r.hits], r.unknown


def test_history_recommends_like_items_and_leaves_out_what_was_seen(indexed: Engine) -> None:
    strategy, ids, unknown = _rec(indexed, positive=(Rated("engine"),), k=2)
    assert strategy == "history" and unknown == []
    assert set(ids) == {"tyres", "brakes"}
    _, ids, _ = _rec(indexed, positive=(Rated("engine"),), seen=("tyres",), k=3)
    assert "tyres" not in ids and "engine" not in ids and ids[0] == "brakes"


def test_weights_and_dislikes_steer_the_history(indexed: Engine) -> None:
    # A mixed history leans to its heavier side.
    _, ids, _ = _rec(indexed, positive=(Rated("engine", 5.0), Rated("oven", 0.2)), k=2)
    assert set(ids) <= CARS
    _, ids, _ = _rec(indexed, positive=(Rated("engine", 0.2), Rated("oven", 5.0)), k=1)
    assert ids == ["oven-230"]
    # Disliking the bread pushes a baking history away from it, and it is never returned.
    _, plain, _ = _rec(indexed, positive=(Rated("starter"),), k=10)
    _, pushed, _ = _rec(indexed, positive=(Rated("starter"),), negative=(Rated("oven"),), k=10)
    assert "oven" in plain and "oven" not in pushed and "starter" not in pushed
    assert pushed.index("oven-230") > plain.index("oven-230")


def test_profile_answers_a_user_without_history(indexed: Engine) -> None:
    strategy, ids, _ = _rec(indexed, profile="car maintenance and repairs", k=3)
    assert strategy == "profile" and set(ids) == CARS
    # A history, when it has a known like, wins over the profile.
    strategy, ids, _ = _rec(indexed, positive=(Rated("news"),), profile="car repairs", k=1)
    assert (strategy, ids) == ("history", ["news-edit"])


def test_central_answers_a_user_with_nothing(indexed: Engine) -> None:
    strategy, ids, _ = _rec(indexed, k=3)
    assert strategy == "central" and len(ids) == 3
    # The most central items: nearest the mean of every document vector.
    handle = indexed.collection("c")
    center, count = doc_vectors.centroid(indexed, handle)
    assert center is not None and count == len(DOCS)
    vecs = doc_vectors.document_vectors(indexed, handle, [d.id for d in DOCS])
    by_centrality = sorted(vecs, key=lambda i: -float(vecs[i] @ center))
    assert ids[0] == by_centrality[0]
    _, seen_out, _ = _rec(indexed, seen=tuple(ids), k=3)
    assert not set(ids) & set(seen_out)


def test_the_centroid_follows_writes(indexed: Engine) -> None:
    before, n = doc_vectors.centroid(indexed, indexed.collection("c"))
    again, _ = doc_vectors.centroid(indexed, indexed.collection("c"))
    assert again is before  # cached for the generation
    delete_documents(indexed, "c", ["news", "news-edit", "stadium"])
    after, m = doc_vectors.centroid(indexed, indexed.collection("c"))
    assert m == n - 3 and after is not None and before is not None
    assert float(after @ before) < 0.9999


def test_unknown_ids_are_listed_and_fall_back(indexed: Engine) -> None:
    strategy, ids, unknown = _rec(indexed, positive=(Rated("gone"), Rated("tyres")),
                                  negative=(Rated("also-gone"),), k=2)
    assert strategy == "history" and unknown == ["gone", "also-gone"]
    assert set(ids) == {"engine", "brakes"}
    strategy, ids, unknown = _rec(indexed, positive=(Rated("gone"),),
                                  profile="sourdough bread", k=2)
    assert strategy == "profile" and unknown == ["gone"] and set(ids) <= BAKING
    strategy, _, unknown = _rec(indexed, positive=(Rated("gone"),), k=2)
    assert strategy == "central" and unknown == ["gone"]


def test_filters_apply_to_every_strategy(indexed: Engine) -> None:
    cars = parse_filter({"topic": "cars"})
    for kw in ({"positive": (Rated("starter"),)}, {"profile": "bread"}, {}):
        _, ids, _ = _rec(indexed, filter=cars, k=5, **kw)
        assert set(ids) == CARS


def test_an_empty_collection_recommends_nothing(engine: Engine) -> None:
    from semsearch.services.collections import create_collection

    create_collection(engine, "empty")
    r = recommend(engine, "empty", RecommendRequest(k=3))
    assert (r.strategy, r.hits) == ("central", [])


@pytest.mark.parametrize(("kw", "needle"), [
    ({"positive": (Rated("engine", -1.0),)}, "weight"),
    ({"positive": (Rated("engine", 0.0),)}, "weight"),
    ({"negative": (Rated("engine", float("nan")),)}, "weight"),
    ({"positive": (Rated("engine", float("inf")),)}, "weight"),
    ({"positive": (Rated(""),)}, "id"),
    ({"seen": ("",)}, "id"),
    ({"k": 0}, "k must"),
    ({"profile": "bad \ud800 text"}, "profile")])
def test_bad_input_is_refused(indexed: Engine, kw: dict[str, object], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        recommend(indexed, "c", RecommendRequest(**kw))  # type: ignore[arg-type]


def test_unknown_collection(engine: Engine) -> None:
    with pytest.raises(NotFoundError):
        recommend(engine, "nope", RecommendRequest())
