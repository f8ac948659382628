"""The HTTP API over a real server on loopback: embed, collections, documents, search,
health and metrics, the errors each returns, and documentation pages that load nothing from
outside."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from importlib import resources

import httpx

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


def test_documents_whose_ids_hold_slashes_are_reachable(live: LiveServer) -> None:
    """Folder indexing makes ids like ``sub/file.md``: they must be fetched and deleted."""
    ids = ["sub/file.md", "a b/ü/deep.md", "/leading.md", "delete"]
    with live.client() as c:
        assert c.post("/collections", json={"name": "paths"}).status_code == 201
        docs = [{"id": i, "text": f"note number {n} about kites"} for n, i in enumerate(ids)]
        assert c.post("/collections/paths/documents",
                      json={"documents": docs}).json()["new"] == len(ids)
        for i in ids:
            assert c.get(f"/collections/paths/documents/{i}").json()["id"] == i
        assert c.delete("/collections/paths/documents/sub%2Ffile.md").json() == {"deleted": 1}
        for i in ids[1:]:
            assert c.delete(f"/collections/paths/documents/{i}").json() == {"deleted": 1}, i
        for i in ids:
            r = c.get(f"/collections/paths/documents/{i}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_filters_past_any_backend_limit_are_4xx(live: LiveServer) -> None:
    with live.client() as c:
        _load_sample(c, "flt")
        for spec in ({f"k{i}": i for i in range(1001)}, {"type": list(range(5000))},
                     {"year": 10**30}, {"type": []}):
            r = c.post("/search", json={"query": "garden", "collection": "flt",
                                        "filter": spec})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", \
                (spec, r.text)


def test_text_that_is_not_valid_unicode_is_4xx_and_changes_nothing(live: LiveServer) -> None:
    """JSON can carry an unpaired surrogate ("\\ud800"); no backend can store or tokenize
    it, so every place a string enters is checked."""
    bad = "lone \ud800 surrogate"
    with live.client() as c:
        _load_sample(c, "uni")

        def post(path: str, body: dict[str, object]) -> httpx.Response:
            # json.dumps escapes the surrogate as \\ud800, as a JSON client would send it.
            return c.post(path, content=json.dumps(body),
                          headers={"content-type": "application/json"})

        cases = [
            post("/collections/uni/documents", {"documents": [
                {"id": "ok", "text": "fine"}, {"id": "x", "text": bad}]}),
            post("/collections/uni/documents", {"documents": [{"id": bad, "text": "a"}]}),
            post("/collections/uni/documents", {"documents": [
                {"id": "m", "text": "a", "metadata": {"k": bad}}]}),
            post("/search", {"query": bad, "collection": "uni"}),
            post("/search", {"query": "garden", "collection": "uni", "filter": {"type": bad}}),
            post("/embed", {"texts": [bad]}),
            post("/v1/embeddings", {"input": [bad], "model": "all-MiniLM-L6-v2"}),
            post("/collections/uni/documents/delete", {"ids": [bad]}),
        ]
        for r in cases:
            assert r.status_code in (400, 422), (r.request.url, r.text)
            message = r.json()["error"]["message"]
            assert "unpaired surrogate" in message or "unicode" in message, r.text
        assert c.get("/collections/uni/documents/ok").status_code == 404  # batch refused whole
        assert c.get("/collections").json()["collections"][0]["documents"] == 12


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
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert "Traceback" not in response.text
        # The type follows the status; param names the field at fault when there is one.
        r = c.post("/embed", json={"texts": [], "input_type": "query"})
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert r.json()["error"]["param"] == "texts"
        assert c.post("/collections", json={"name": "err"}).json()["error"]["type"] == (
            "conflict_error")
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


def test_tokens_per_request_are_a_limit(live_factory: object) -> None:
    srv = live_factory(api_max_request_tokens=20)  # type: ignore[operator]
    with srv.client() as c:
        ok = c.post("/embed", json={"texts": ["one two three"] * 4})  # 4 x (3 + 2) = 20
        assert ok.status_code == 200, ok.text
        assert ok.json()["tokens"] == 20
        for path, body in (("/embed", {"texts": ["one two three"] * 5}),
                           ("/v1/embeddings", {"model": "all-MiniLM-L6-v2",
                                               "input": ["one two three"] * 5}),
                           ("/search", {"query": "word " * 19, "collection": "none"})):
            r = c.post(path, json=body)
            error = r.json()["error"]
            assert r.status_code == 413, (path, r.text)
            assert error["code"] == "too_many_tokens", r.text
            assert "SEMSEARCH_API_MAX_REQUEST_TOKENS" in error["message"]
        assert c.post("/collections", json={"name": "t"}).status_code == 201
        docs = [{"id": f"d{i}", "text": "one two three four five six"} for i in range(3)]
        r = c.post("/collections/t/documents", json={"documents": docs})
        assert r.status_code == 413 and r.json()["error"]["param"] == "documents", r.text
        assert c.get("/collections").json()["collections"][0]["documents"] == 0


def test_search_takes_q_or_query_on_both_methods(live: LiveServer) -> None:
    with live.client() as c:
        _load_sample(c, "qq")
        text = "sourdough starter feeding"
        base = {"collection": "qq", "k": 3, "mode": "keyword"}
        answers = [c.get("/search", params={**base, "q": text}),
                   c.get("/search", params={**base, "query": text}),
                   c.post("/search", json={**base, "query": text}),
                   c.post("/search", json={**base, "q": text})]
        ids = [[h["doc_id"] for h in r.json()["hits"]] for r in answers]
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        assert ids[0] and all(i == ids[0] for i in ids), ids
        for r in (c.get("/search", params={**base, "q": text, "query": text}),
                  c.post("/search", json={**base, "q": text, "query": text})):
            assert r.status_code == 422, r.text
            assert r.json()["error"]["message"] == "give the query as 'query' or as 'q', not both"
        for r in (c.get("/search", params=base), c.post("/search", json=base)):
            assert r.status_code == 422, r.text
            assert r.json()["error"]["message"] == (
                "the query is missing: send it as 'query' (or 'q')")


def test_search_answers_are_the_declared_schema_with_any_metadata(live: LiveServer) -> None:
    """/search writes its JSON itself (orjson), not through the response model: the answer
    must still be a SearchResponse, with ranks and scores as floats, and metadata orjson
    cannot write (an integer past 64 bits) must come back as sent, not as a 500."""
    from semsearch.api.schemas import SearchResponse

    big = 2**70 + 1
    meta = {"big": big, "ratio": 0.1, "tags": ["a", "é"], "nested": {"n": None}}
    with live.client() as c:
        assert c.post("/collections", json={"name": "schema"}).status_code == 201
        r = c.post("/collections/schema/documents", json={"documents": [
            {"id": "big", "text": "sourdough starter feeding schedule", "metadata": meta},
            {"id": "plain", "text": "a starter for sourdough bread", "metadata": {"n": 1}}]})
        assert r.status_code == 200, r.text
        for mode in ("hybrid", "dense", "keyword"):
            r = c.get("/search", params={"q": "sourdough starter", "collection": "schema",
                                         "k": 5, "mode": mode})
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            body = r.json()
            SearchResponse.model_validate(body)  # the declared schema, field for field
            assert set(body) == {"hits", "total", "timings_ms", "version"}
            hit = next(h for h in body["hits"] if h["doc_id"] == "big")
            assert hit["metadata"] == meta and hit["metadata"]["big"] == big
            assert all(isinstance(h["score"], float) for h in body["hits"])
            for h in body["hits"]:
                for part in h["components"].values():
                    assert isinstance(part["rank"], float) and isinstance(part["score"], float)


class _Refs(HTMLParser):
    """Every URL a page makes the browser load: src, href, and url(...) in inline CSS."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "poster", "data")
                      and v]

    def handle_data(self, data: str) -> None:
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", data)
        self.urls += re.findall(r"@import\s+['\"]([^'\"]+)", data)
        self.urls += re.findall(r"\burl:\s*'([^']+)'", data)  # SwaggerUIBundle({url: ...})


def _refs(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    return parser.urls


def test_docs_page_loads_only_from_this_server(live: LiveServer) -> None:
    with live.client() as c:
        r = c.get("/docs")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "default-src 'self'" in r.headers["content-security-policy"]
        refs = _refs(r.text)
        assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css",
                "/docs/assets/favicon.png", "/openapi.json"} == set(refs), refs
        for ref in refs:
            got = c.get(ref)
            assert got.status_code == 200 and len(got.content) > 500, (ref, got.text[:200])
        assert not re.search(r"https?://|//cdn", r.text), r.text
        assert '"validatorUrl": null' in r.text  # no badge fetched from validator.swagger.io
        types = {name: c.get(f"/docs/assets/{name}").headers["content-type"].split(";")[0]
                 for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")}
        assert types == {"swagger-ui-bundle.js": "text/javascript",
                         "swagger-ui.css": "text/css", "favicon.png": "image/png"}
        schemes = c.get("/openapi.json").json()["components"]["securitySchemes"]
        assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}  # Authorize button
        # ReDoc is off: it always fetches its logo from its vendor's CDN.
        for gone in ("/redoc", "/docs/oauth2-redirect"):
            assert c.get(gone).status_code == 404
        for name in ("__init__.py", "..%2F__init__.py", "core.py", "redoc.standalone.js"):
            r = c.get(f"/docs/assets/{name}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


def test_search_page_loads_nothing_from_outside(live: LiveServer) -> None:
    shipped = (resources.files("semsearch") / "web" / "index.html").read_text(encoding="utf-8")
    with live.client() as c:
        served = c.get("/").text
    assert served == shipped
    assert all(not re.match(r"[a-z]+:|//", ref) for ref in _refs(served)), _refs(served)
    assert not re.search(r"https?://", served)
    # Its only requests are fetch() calls to this server's own API paths.
    calls = re.findall(r"""api\(\s*"[A-Z]+"\s*,\s*["'`]([^"'`]+)""", served)
    assert calls and all(path.startswith("/") for path in calls), calls
