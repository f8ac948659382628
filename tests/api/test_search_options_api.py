"""POST/GET /search with MMR and vector arithmetic, on a real server and the real model;
bad options are 4xx with the standard error body."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.api.conftest import LiveServer

WORDS = Path(__file__).parents[2] / "examples" / "words.jsonl"


def _load_words(c: httpx.Client, name: str) -> None:
    docs = [json.loads(line) for line in WORDS.read_text().splitlines()]
    assert c.post("/collections", json={"name": name}).status_code == 201
    r = c.post(f"/collections/{name}/documents", json={"documents": docs})
    assert r.status_code == 200, r.text


def test_vector_arithmetic_and_mmr_over_http(live: LiveServer) -> None:
    with live.client() as c:
        _load_words(c, "words")
        r = c.post("/search", json={"collection": "words", "plus": ["woman", "king"],
                                    "minus": ["man"], "k": 3})
        assert r.status_code == 200, r.text
        hits = [h["doc_id"] for h in r.json()["hits"]]
        assert hits[0] == "queen" and not {"king", "man", "woman"} & set(hits)
        r = c.post("/search", json={"collection": "words", "plus_ids": ["king", "woman"],
                                    "minus_ids": ["man"], "k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["doc_id"] == "queen"
        r = c.get("/search", params={"collection": "words", "q": "princess", "k": 4,
                                     "mmr": 0.5})
        assert r.status_code == 200, r.text
        assert all("mmr" in h["components"] for h in r.json()["hits"])


def test_bad_search_options_are_4xx(live: LiveServer) -> None:
    with live.client() as c:
        _load_words(c, "words2")
        cases = [
            ({"collection": "words2", "plus": ["king"], "mode": "keyword"}, 422, "dense index"),
            ({"collection": "words2", "query": "king", "mmr": 2}, 422, "mmr"),
            ({"collection": "words2", "minus": ["man"]}, 422, "query is missing"),
            ({"collection": "words2", "plus": ["king"], "minus": ["king"]}, 422, "cancel out"),
            ({"collection": "words2", "plus": [""]}, 422, "empty"),
            ({"collection": "words2", "plus_ids": ["nobody"]}, 404, "nobody"),
            ({"collection": "words2", "query": "king", "title_weight": -1}, 422,
             "title_weight"),
        ]
        for body, status, text in cases:
            r = c.post("/search", json=body)
            assert r.status_code == status, (body, r.text)
            assert text in json.dumps(r.json()["error"]), (body, r.text)


def test_rerank_over_http(live_factory: Callable[..., LiveServer], live: LiveServer) -> None:
    from tests.fakes.rerank_server import FakeRerankServer

    with FakeRerankServer("infinity") as fake:
        srv = live_factory(reranker="http", reranker_url=fake.url, reranker_format="infinity")
        with srv.client() as c:
            _load_words(c, "words3")
            r = c.post("/search", json={"collection": "words3", "query": "queen", "k": 3,
                                        "rerank": 5})
            assert r.status_code == 200, r.text
            assert all("rerank" in h["components"] for h in r.json()["hits"])
            assert fake.requests and fake.requests[-1].path == "/rerank"
            r = c.get("/search", params={"collection": "words3", "q": "queen", "rerank": 0})
            assert r.status_code == 200 and len(fake.requests) == 1
    # A server with no re-ranker: asking for one is a 4xx that says what to set.
    with live.client() as c:
        _load_words(c, "words4")
        r = c.post("/search", json={"collection": "words4", "query": "queen", "rerank": 5})
        assert r.status_code == 422, r.text
        assert "SEMSEARCH_RERANKER" in r.json()["error"]["message"]
