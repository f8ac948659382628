"""``/collections/{name}/search-defaults`` on a real server and the real model: read the
defaults and their history, set a revision, searches use it, revert it; bad input is 4xx
with the standard error body."""

from __future__ import annotations

import httpx

from tests.api.conftest import LiveServer
from tests.tune_corpus import documents


def _load(c: httpx.Client, name: str) -> None:
    assert c.post("/collections", json={"name": name}).status_code == 201
    docs = [{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in documents()]
    r = c.post(f"/collections/{name}/documents", json={"documents": docs})
    assert r.status_code == 200, r.text


def _top(c: httpx.Client, name: str, **options: object) -> list[str]:
    r = c.post("/search", json={"collection": name, "query": "ZK4434 procedure", "k": 3,
                                "mode": "keyword", **options})
    assert r.status_code == 200, r.text
    return [h["doc_id"] for h in r.json()["hits"]]


def test_read_set_use_and_revert_search_defaults(live: LiveServer) -> None:
    with live.client() as c:
        _load(c, "codes")
        r = c.get("/collections/codes/search-defaults")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["collection"] == "codes" and body["history"] == []
        assert body["current"]["revision"] == 0
        assert body["current"]["fusion"] == "rrf" and body["current"]["title_weight"] is None
        assert body["builtin"]["rrf_k"] == body["current"]["rrf_k"]

        plain = _top(c, "codes")
        assert plain[0] == "log-2"  # three mentions in a log beat one in a title
        r = c.put("/collections/codes/search-defaults",
                  json={"title_weight": 5, "fusion": "minmax", "note": "titles matter"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["current"]["revision"] == 1 and body["current"]["title_weight"] == 5
        assert body["history"][0]["note"] == {"by": "api", "note": "titles matter"}
        assert _top(c, "codes")[0] == "proc-2"  # searches use the stored default
        assert _top(c, "codes", title_weight=1)[0] == "log-2"  # a request still overrides

        r = c.post("/collections/codes/search-defaults/revert")
        assert r.status_code == 200, r.text
        assert r.json()["reverted"] == 1 and r.json()["current"]["revision"] == 0
        assert _top(c, "codes") == plain
        r = c.post("/collections/codes/search-defaults/revert")
        assert r.status_code == 409 and r.json()["error"]["code"] == "nothing_to_revert"


def test_bad_input_is_4xx_with_the_error_body(live: LiveServer) -> None:
    with live.client() as c:
        _load(c, "codes4xx")
        for path in ("/collections/nope/search-defaults",):
            r = c.get(path)
            assert r.status_code == 404 and "unknown collection" in r.json()["error"]["message"]
        r = c.post("/collections/nope/search-defaults/revert")
        assert r.status_code == 404, r.text
        r = c.put("/collections/nope/search-defaults", json={"rrf_k": 10})
        assert r.status_code == 404, r.text
        for bad in ({"fusion": "borda"}, {"rrf_k": 0}, {"title_weight": 0},
                    {"title_weight": 1000}, {"candidates": 0}, {"weights": {"dense": -1}},
                    {"weights": {"sparse": 1}}, {"k1": 1.2},
                    {"weights": {"dense": 0, "keyword": 0}}):
            r = c.put("/collections/codes4xx/search-defaults", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert set(r.json()["error"]) >= {"message", "type", "code"}, r.text
        r = c.put("/collections/codes4xx/search-defaults", content=b"{not json",
                  headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["message"]  # not JSON at all
        assert c.get("/collections/codes4xx/search-defaults").json()["history"] == []
