"""Similar documents, near-duplicate clusters and recommendations over HTTP, on a real
server, the real model and a real index; bad input is 4xx with the standard error body."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import LiveServer
from tests.services.relevance_corpus import CLUSTERS, DOCS, STARTER

NAME = "rel"
# An id holding '/' (a file indexed from a folder), a copy of the starter page.
PATH_ID = "notes/starter.md"


@pytest.fixture(scope="module")
def server(live: LiveServer) -> LiveServer:
    docs = [{"id": d.id, "text": d.text, "metadata": dict(d.metadata)} for d in DOCS]
    docs.append({"id": PATH_ID, "text": STARTER, "metadata": {"topic": "baking"}})
    with live.client() as c:
        assert c.post("/collections", json={"name": NAME}).status_code == 201
        r = c.post(f"/collections/{NAME}/documents", json={"documents": docs})
        assert r.status_code == 200, r.text
    return live


def _error(r: httpx.Response, status: int, needle: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert needle in json.dumps(body), body


def test_similar_documents(server: LiveServer) -> None:
    with server.client() as c:
        r = c.get(f"/collections/{NAME}/documents/starter/similar", params={"k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        ids = [h["doc_id"] for h in body["hits"]]
        assert body["doc_id"] == "starter" and body["total"] == 3 and body["version"] == NAME
        assert set(ids) == {"starter-copy", "starter-each", PATH_ID}
        # An id with '/' works, and the plain document route still serves it.
        r = c.get(f"/collections/{NAME}/documents/{PATH_ID}/similar",
                  params={"k": 2, "filter": ["topic=baking"]})
        assert r.status_code == 200, r.text
        assert {h["doc_id"] for h in r.json()["hits"]} == {"starter", "starter-copy"}
        assert c.get(f"/collections/{NAME}/documents/{PATH_ID}").json()["id"] == PATH_ID
        r = c.get(f"/collections/{NAME}/documents/starter/similar",
                  params={"k": 10, "filter": '{"topic": {"in": ["cars"]}}'})
        assert {h["doc_id"] for h in r.json()["hits"]} == {"engine", "tyres", "brakes"}


def test_similar_refusals(server: LiveServer) -> None:
    with server.client() as c:
        _error(c.get(f"/collections/{NAME}/documents/missing/similar"), 404, "missing")
        _error(c.get("/collections/nope/documents/starter/similar"), 404, "nope")
        _error(c.get(f"/collections/{NAME}/documents/starter/similar", params={"k": 0}),
               422, "k")
        _error(c.get(f"/collections/{NAME}/documents/starter/similar",
                     params={"filter": "{bad json"}), 422, "filter")
        _error(c.get(f"/collections/{NAME}/documents/starter/similar",
                     params={"filter": "noequals"}), 422, "filter")


def test_duplicates(server: LiveServer) -> None:
    with server.client() as c:
        for method in ("exact", "ann"):
            r = c.get(f"/collections/{NAME}/duplicates",
                      params={"threshold": 0.95, "method": method})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["method"] == method and body["documents"] == len(DOCS) + 1
            found = sorted(({m["id"] for m in cl["members"]} for cl in body["clusters"]),
                           key=sorted)
            starter = {"starter", "starter-copy", "starter-each", PATH_ID}
            assert found == sorted([starter if "starter" in s else s for s in CLUSTERS],
                                   key=sorted)
            assert body["clusters"][0]["size"] == 4 and body["duplicates"] == 5
        r = c.get(f"/collections/{NAME}/duplicates", params={"limit": 1})
        assert len(r.json()["clusters"]) == 1 and r.json()["clusters_total"] == 3


def test_duplicates_refusals(server: LiveServer) -> None:
    with server.client() as c:
        for params in ({"threshold": 0}, {"threshold": 1.5}, {"threshold": "nan"},
                       {"method": "fast"}, {"neighbours": 0}, {"limit": 0}):
            _error(c.get(f"/collections/{NAME}/duplicates", params=params), 422,
                   next(iter(params)))
        _error(c.get("/collections/nope/duplicates"), 404, "nope")


def test_recommend_strategies(server: LiveServer) -> None:
    with server.client() as c:
        r = c.post("/recommend", json={"collection": NAME, "k": 2,
                                       "positive": ["engine", {"id": "gone", "weight": 2}],
                                       "seen": ["tyres"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["strategy"] == "history" and body["unknown"] == ["gone"]
        ids = [h["doc_id"] for h in body["items"]]
        assert ids[0] == "brakes" and not {"engine", "tyres"} & set(ids)
        r = c.post("/recommend", json={"collection": NAME, "k": 3, "positive": ["gone"],
                                       "profile": "car maintenance and repairs"})
        body = r.json()
        assert (body["strategy"], body["unknown"]) == ("profile", ["gone"])
        assert {h["doc_id"] for h in body["items"]} == {"engine", "tyres", "brakes"}
        r = c.post("/recommend", json={"collection": NAME, "k": 3, "profile": "  ",
                                       "negative": [{"id": "news", "weight": 1}],
                                       "filter": {"topic": "city"}})
        body = r.json()
        assert r.status_code == 200 and body["strategy"] == "central", r.text
        assert {h["doc_id"] for h in body["items"]} == {"news-edit", "stadium"}


def test_recommend_refusals(server: LiveServer) -> None:
    with server.client() as c:
        base = {"collection": NAME}
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"positive": [{"id": "engine", "weight": -1}]}, 422, "weight"),
            ({"positive": [{"id": "engine", "weight": 0}]}, 422, "weight"),
            ({"negative": [{"id": "engine", "weight": "heavy"}]}, 422, "weight"),
            ({"positive": [""]}, 422, "positive"),
            ({"seen": [7]}, 422, "seen"),
            ({"k": 0}, 422, "k"),
            ({"filter": {"topic": {"near": 1}}}, 422, "near"),
            ({"profile": "x" * 2_000_000}, 413, "profile"),
            ({"surprise": 1}, 422, "surprise"),
            ({"collection": "nope"}, 404, "nope"),
        ]
        for extra, status, needle in cases:
            _error(c.post("/recommend", json={**base, **extra}), status, needle)
        # NaN is not JSON, but Python's parser reads it: still refused.
        r = c.post("/recommend", content='{"collection": "rel", "positive": '
                   '[{"id": "engine", "weight": NaN}]}',
                   headers={"Content-Type": "application/json"})
        _error(r, 422, "weight")
