"""The HTTP API over a real server on loopback: embed, collections, documents, search,
health and metrics, and the errors each returns."""

from __future__ import annotations

import json

from semsearch.adapters.sources.files import iter_documents
from semsearch.services.quickstart import sample_dir
from tests.api.conftest import LiveServer


def _load_sample(c: object, name: str = "docs") -> None:
    import httpx

    assert isinstance(c, httpx.Client)
    assert c.post("/collections", json={"name": name}).status_code == 201
    docs = [{"id": d.id, "text": d.text, "title": d.title, "metadata": dict(d.metadata)}
            for d in iter_documents(sample_dir())]
    r = c.post(f"/collections/{name}/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    assert r.json()["new"] == 12


def test_health_embed_and_search(live: LiveServer) -> None:
    with live.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"ready": True}
        r = c.post("/embed", json={"texts": ["hello", "world"], "input_type": "query"})
        body = r.json()
        assert r.status_code == 200 and body["dimension"] == 384 and len(body["vectors"]) == 2
        assert body["model"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert body["tokens"] == 6  # [CLS] word [SEP] twice
        _load_sample(c)
        g = c.get("/search", params={"q": "sourdough starter feeding", "collection": "docs",
                                     "k": 3, "mode": "hybrid"}).json()
        assert g["hits"][0]["doc_id"] == "sourdough-starter.md" and g["total"] == 3
        assert set(g["hits"][0]["components"]) == {"dense", "keyword"}
        p = c.post("/search", json={"query": "garden", "collection": "docs", "k": 5,
                                    "mode": "keyword", "filter": {"type": "md"}}).json()
        assert all(h["metadata"]["type"] == "md" for h in p["hits"])
        cols = c.get("/collections").json()["collections"]
        assert [x["name"] for x in cols] == ["docs"] and cols[0]["documents"] == 12
        doc = c.get("/collections/docs/documents/compost.md").json()
        assert doc["title"] == "Composting kitchen scraps at home"


def test_delete_and_metrics(live: LiveServer) -> None:
    with live.client() as c:
        _load_sample(c, "del")
        assert c.delete("/collections/del/documents/compost.md").json() == {"deleted": 1}
        hits = c.get("/search", params={"q": "compost heap greens browns",
                                        "collection": "del", "k": 12}).json()["hits"]
        assert "compost.md" not in [h["doc_id"] for h in hits]
        assert c.delete("/collections/del/documents/compost.md").status_code == 404
        assert c.post("/collections/del/documents/delete",
                      json={"ids": ["coffee-brewing.md", "nope"]}).json() == {"deleted": 1}
        text = c.get("/metrics").text
        assert 'semsearch_documents{collection="del"} 10.0' in text
        assert 'semsearch_stage_seconds_count{mode="hybrid",stage="dense"}' in text
        assert 'semsearch_request_seconds_bucket{le="0.005",method="GET",route="/search"' in text
        assert "semsearch_tokens_total" in text
        assert c.delete("/collections/del").json() == {"dropped": "del"}
        assert c.get("/search", params={"q": "x", "collection": "del"}).status_code == 404


def test_errors_are_json_with_stable_codes_and_change_nothing(live: LiveServer) -> None:
    with live.client() as c:
        _load_sample(c, "err")
        cases = [
            (c.post("/embed", content=b"{not json", headers={"content-type":
                                                             "application/json"}),
             400, "malformed_json"),
            (c.post("/embed", json={"texts": ["ok", "  "]}), 422, "empty_text"),
            (c.post("/embed", json={"texts": []}), 422, "invalid_request"),
            (c.get("/search", params={"q": "x", "collection": "nope"}), 404, "not_found"),
            (c.post("/collections/nope/documents", json={"documents": [{"id": "a",
                                                                         "text": "b"}]}),
             404, "not_found"),
            (c.post("/collections/err/documents", json={"documents": [{"id": "a"}]}),
             422, "invalid_input"),
            (c.post("/collections", json={"name": "err"}), 409, "collection_exists"),
            (c.post("/collections", json={"name": "bad/name"}), 422, "invalid_input"),
            (c.post("/search", json={"query": "x", "collection": "err",
                                     "filter": {"a": {"near": 1}}}), 422, "invalid_input"),
            (c.get("/nowhere"), 404, "not_found"),
        ]
        for response, status, code in cases:
            body = response.json()
            assert response.status_code == status, (code, response.text)
            assert body["error"]["code"] == code and body["error"]["message"]
            assert "Traceback" not in response.text
        info = c.get("/collections").json()["collections"]
        assert [x["documents"] for x in info if x["name"] == "err"] == [12]


def test_limits_name_the_limit(live_factory: object) -> None:
    srv = live_factory(api_max_texts=3, api_max_text_chars=50,  # type: ignore[operator]
                       api_max_body_bytes=2048)
    with srv.client() as c:
        r = c.post("/embed", json={"texts": ["a"] * 4})
        assert r.status_code == 413 and "SEMSEARCH_API_MAX_TEXTS" in r.json()["error"]["message"]
        r = c.post("/embed", json={"texts": ["x" * 51]})
        assert r.status_code == 413 and "50" in r.json()["error"]["message"]
        r = c.post("/embed", content=json.dumps({"texts": ["y" * 3000]}),
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
