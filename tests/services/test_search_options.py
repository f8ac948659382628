"""Search options past plain retrieval, on the real model and a real index: MMR
diversification, vector arithmetic (texts and documents), and their refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semsearch.core.types import Document, Mode
from semsearch.errors import InputError, NotFoundError
from semsearch.runtime.engine import Engine
from semsearch.services.ingest import index_documents
from semsearch.services.search import SearchRequest, search

WORDS = Path(__file__).parents[2] / "examples" / "words.jsonl"

# Three near-copies of one page (a mirrored FAQ), then pages on other sides of the topic.
STARTER = "Feed your sourdough starter with equal weights of flour and water every day."
REDUNDANT = [
    Document("copy-1", STARTER),
    Document("copy-2", STARTER.replace("every day", "each day")),
    Document("copy-3", STARTER.replace("Feed your", "You should feed the")),
    Document("copy-4", STARTER + " Keep it warm."),
    Document("oven", "Bake sourdough bread in a preheated Dutch oven at 250 degrees."),
    Document("flour", "Rye and whole wheat flour make a sourdough starter more active."),
    Document("history", "Sourdough is the oldest form of leavened bread, from ancient Egypt."),
    Document("unrelated", "Change the oil of a car engine every ten thousand kilometres."),
]
COPIES = {"copy-1", "copy-2", "copy-3", "copy-4"}


def _ids(engine: Engine, collection: str, **kw: object) -> list[str]:
    return [h.doc_id for h in search(engine, collection, SearchRequest(**kw)).hits]  # type: ignore[arg-type]


def _words(engine: Engine) -> None:
    docs = [Document(o["id"], o["text"]) for o in map(json.loads, WORDS.read_text().splitlines())]
    index_documents(engine, "words", docs)


@pytest.mark.parametrize("mode", list(Mode))
def test_mmr_spreads_a_page_of_near_copies_over_distinct_documents(engine: Engine,
                                                                   mode: Mode) -> None:
    index_documents(engine, "faq", REDUNDANT)
    query = "how to feed a sourdough starter flour water"
    plain = _ids(engine, "faq", query=query, mode=mode, k=4)
    diverse = _ids(engine, "faq", query=query, mode=mode, k=4, mmr=0.5)
    # Without MMR the near-copies crowd the page; with it, at most two of them stay.
    assert len(COPIES & set(plain)) >= 3, plain
    assert len(COPIES & set(diverse)) <= 2, diverse
    assert diverse[0] == plain[0]  # the best match still leads
    assert len(set(diverse)) == 4


def test_mmr_lambda_one_is_the_relevance_order(engine: Engine) -> None:
    index_documents(engine, "faq", REDUNDANT)
    query = "sourdough starter"
    assert _ids(engine, "faq", query=query, k=5, mmr=1.0) == _ids(engine, "faq", query=query,
                                                                  k=5)
    hits = search(engine, "faq", SearchRequest(query, k=3, mmr=0.3)).hits
    assert all("mmr" in h.components for h in hits)
    assert [h.components["mmr"].rank for h in hits] == [1, 2, 3]


def test_king_minus_man_plus_woman_is_queen(engine: Engine) -> None:
    _words(engine)
    ids = _ids(engine, "words", plus=("woman", "king"), minus=("man",), k=3)
    # The terms themselves are left out, as word-analogy tools do.
    assert ids[0] == "queen", ids
    assert not {"king", "man", "woman"} & set(ids)


def test_arithmetic_takes_document_ids_and_a_query(engine: Engine) -> None:
    _words(engine)
    by_id = _ids(engine, "words", plus_ids=("king", "woman"), minus_ids=("man",), k=3)
    assert by_id[0] == "queen", by_id
    assert not {"king", "man", "woman"} & set(by_id)
    # A query text is one more positive term; hybrid is answered densely.
    mixed = search(engine, "words", SearchRequest("king", plus=("woman",), minus=("man",), k=3))
    assert mixed.hits[0].doc_id == "queen"
    assert set(mixed.hits[0].components) == {"dense"}


@pytest.mark.parametrize(("kw", "message"), [
    ({"plus": ("king",), "mode": Mode.KEYWORD}, "dense index"),
    ({"plus": ("king",), "minus": ("king",)}, "cancel out"),
    ({"minus": ("man",)}, "at least one positive"),
    ({"plus": ("king", " ")}, "plus #2 is empty"),
    ({"query": "king", "mmr": 1.5}, "between 0 and 1"),
    ({"query": "king", "mmr": float("nan")}, "between 0 and 1"),
    ({"query": "king", "title_weight": 0.0}, "title_weight"),
    ({"plus": ("king",), "rerank": 5}, "query text"),
    ({"plus": tuple(f"w{i}" for i in range(65))}, "at most 64"),
])
def test_bad_options_are_refused_clearly(engine: Engine, kw: dict[str, object],
                                         message: str) -> None:
    _words(engine)
    with pytest.raises(InputError, match=message):
        search(engine, "words", SearchRequest(**kw))  # type: ignore[arg-type]


def test_an_unknown_document_in_the_sum_is_named(engine: Engine) -> None:
    _words(engine)
    with pytest.raises(NotFoundError, match="'nobody'"):
        search(engine, "words", SearchRequest(plus_ids=("king", "nobody")))
