"""API keys over a real server: 401 without a (known) key, 403 without the scope, success with
it; both header forms; per-collection listing; hashes only on disk; and a walk over the app's
routes so a new endpoint cannot ship without authentication by accident, and exactly the
documented public set answers without a key."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Mount

from semsearch.api.app import DOCS_ASSETS
from semsearch.api.auth import PUBLIC_PATHS, KeyStore, hash_key
from semsearch.api.routes import principal_of
from tests.api.conftest import LiveServer

README = Path(__file__).resolve().parents[2] / "README.md"

# Paths that answer without a key, on purpose. Adding to this list is a security decision.
PUBLIC = {
    "/healthz", "/readyz",  # probes: kubelets and load balancers carry no key
    "/",  # the static search page; every call it makes goes through the keyed API
    "/openapi.json", "/docs", "/docs/assets/{name}",  # the schema, not data
}

# A valid request for each protected endpoint, so that a route that lost its auth would
# answer 2xx (and fail the 401 check) rather than 422. Keyed by (method, route path).
SAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/metrics"): {},
    ("POST", "/embed"): {"json": {"texts": ["hello"]}},
    ("GET", "/v1/models"): {},
    ("GET", "/v1/models/{model_id:path}"): {},
    ("POST", "/v1/embeddings"): {"json": {"model": "all-MiniLM-L6-v2", "input": "hello"}},
    ("GET", "/search"): {"params": {"q": "lantern", "collection": "docs"}},
    ("POST", "/search"): {"json": {"query": "lantern", "collection": "docs"}},
    ("POST", "/ask"): {"json": {"question": "lantern?", "collection": "docs"}},
    ("GET", "/collections"): {},
    ("POST", "/collections"): {"json": {"name": "fresh"}},
    ("DELETE", "/collections/{name}"): {},
    ("POST", "/collections/{name}/documents"):
        {"json": {"documents": [{"id": "d9", "text": "a lantern by the sea"}]}},
    ("GET", "/collections/{name}/documents/{doc_id:path}"): {},
    ("DELETE", "/collections/{name}/documents/{doc_id:path}"): {},
    ("POST", "/collections/{name}/documents/delete"): {"json": {"ids": ["d9"]}},
    ("POST", "/collections/{name}/rollback"): {},
    ("POST", "/collections/{name}/activate/{version}"): {},
    ("POST", "/collections/{name}/compact"): {},
    ("GET", "/collections/{name}/documents/{doc_id:path}/similar"): {},
    ("GET", "/collections/{name}/duplicates"): {},
    ("POST", "/recommend"): {"json": {"collection": "docs"}},
    ("GET", "/collections/{name}/search-defaults"): {},
    ("PUT", "/collections/{name}/search-defaults"): {"json": {"fusion": "minmax"}},
    ("POST", "/collections/{name}/search-defaults/revert"): {},
}


@dataclass
class Keys:
    admin: str
    reader: str  # read on "docs"
    writer: str  # write on "docs"
    path: Path


@dataclass
class Env:
    srv: LiveServer
    keys: Keys


def _walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    """Every endpoint as (full path, route), through included routers and mounts."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:  # newer FastAPI keeps an included router as one node
            for ctx in contexts():
                yield prefix + (ctx.path or ctx.original_route.path), ctx.original_route
        elif isinstance(route, Mount):
            sub = getattr(route, "routes", None)
            if sub:
                yield from _walk(list(sub), prefix + route.path)
            else:
                yield prefix + route.path, route  # e.g. StaticFiles: opaque, so not allowed
        else:
            yield prefix + getattr(route, "path", "?"), route


def _depends_on(dependant: Any, call: Callable[..., Any]) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def _endpoints(srv: LiveServer) -> list[tuple[str, str, BaseRoute]]:
    out = []
    for path, route in _walk(list(srv.app.routes)):
        methods = sorted(getattr(route, "methods", None) or {"*"})
        out += [(m, path, route) for m in methods if m != "HEAD"]
    return out


def _url(path: str) -> str:
    return (path.replace("{name}", "docs").replace("{doc_id:path}", "sub/d1.md")
            .replace("{version}", "1")
            .replace("{model_id:path}", "sentence-transformers/all-MiniLM-L6-v2"))


def _assert_error(r: httpx.Response, status: int, code: str, *secrets: str) -> None:
    assert r.status_code == status, (r.request.method, r.request.url, r.text)
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert set(error) == {"message", "type", "param", "code"}  # OpenAI's shape, everywhere
    assert "Traceback" not in r.text and 'File "' not in r.text
    for s in secrets:
        assert s not in r.text


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def env(live_factory: Callable[..., LiveServer],
        tmp_path_factory: pytest.TempPathFactory) -> Env:
    path = tmp_path_factory.mktemp("keys") / "api_keys.json"
    store = KeyStore(path)
    keys = Keys(admin=store.create("ops", {"*": "admin"}),
                reader=store.create("docs-reader", {"docs": "read"}),
                writer=store.create("docs-writer", {"docs": "write"}), path=path)
    srv = live_factory(api_keys_file=path)
    with srv.client(headers=_bearer(keys.admin)) as c:
        for name, word in (("docs", "lantern"), ("other", "lantern")):
            assert c.post("/collections", json={"name": name}).status_code == 201
            docs = [{"id": f"{name[0]}{i}", "text": f"A {word} note number {i} from {name}."}
                    for i in range(1, 4)]
            r = c.post(f"/collections/{name}/documents", json={"documents": docs})
            assert r.status_code == 200, r.text
    return Env(srv, keys)


def test_every_route_is_authenticated_or_explicitly_public(env: Env) -> None:
    endpoints = _endpoints(env.srv)
    paths = {p for _, p, _ in endpoints}
    assert {"/search", "/collections", "/embed", "/healthz"} <= paths, paths  # the walk works
    assert PUBLIC & paths == PUBLIC, f"stale allow-list entries: {PUBLIC - paths}"
    unprotected = [f"{m} {p}" for m, p, route in endpoints if p not in PUBLIC and not (
        isinstance(route, APIRoute) and _depends_on(route.dependant, principal_of))]
    assert not unprotected, ("routes without the API-key dependency; add `who: Who` (and a "
                             f"`require`) or, deliberately, list them in PUBLIC: {unprotected}")
    missing = [f"{m} {p}" for m, p, _ in endpoints
               if p not in PUBLIC and (m, p) not in SAMPLES]
    assert not missing, f"add a sample request to SAMPLES for {missing}"


@pytest.mark.embedded_only(
    reason="keys in a file; on PostgreSQL they are rows (tests/e2e/test_postgres_shared.py)")
def test_no_key_or_unknown_key_is_401_on_every_protected_route(env: Env) -> None:
    bad = [{}, {"X-API-Key": "ss_not-a-key"}, _bearer("ss_not-a-key"), {"Authorization": "Bearer"},
           {"Authorization": f"Basic {env.keys.admin}"},  # only Bearer carries a key
           {"X-API-Key": env.keys.admin[:-1]}]
    endpoints = [(m, p) for m, p, _ in _endpoints(env.srv) if p not in PUBLIC]
    assert len(endpoints) >= len(SAMPLES)
    with env.srv.client() as c:
        for method, path in endpoints:
            for headers in bad:
                r = c.request(method, _url(path), headers=headers,
                              **SAMPLES.get((method, path), {}))
                _assert_error(r, 401, "unauthorized", env.keys.admin, "ss_not-a-key")
                assert r.headers["www-authenticate"] == "Bearer"
            # Authentication comes before validation: no schema hints for strangers.
            r = c.request(method, _url(path), json={"bogus": 1})
            _assert_error(r, 401, "unauthorized")
        # Nothing above changed anything.
        listing = c.get("/collections", headers=_bearer(env.keys.admin)).json()
        assert sorted(x["name"] for x in listing["collections"]) == ["docs", "other"]
        assert [x["documents"] for x in listing["collections"]] == [3, 3]


def test_public_paths_answer_without_a_key(env: Env) -> None:
    with env.srv.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"ready": True}
        assert c.get("/").status_code == 200 and "<html" in c.get("/").text.lower()
        assert c.get("/openapi.json").status_code == 200


@pytest.mark.embedded_only(
    reason="keys in a file; on PostgreSQL they are rows (tests/e2e/test_postgres_shared.py)")
def test_exactly_the_documented_public_set_answers_without_a_key(env: Env) -> None:
    """Every route of the app, keys configured, no key sent: the public set answers 200,
    everything else 401; and that set is the code's, and the README's."""
    assert set(PUBLIC_PATHS) == PUBLIC
    sentence = re.search(r"except these, public on purpose(.*?)\(in `/docs`",
                         README.read_text(encoding="utf-8"), re.DOTALL)
    assert sentence, "the README's API keys paragraph lists the public paths"
    assert set(re.findall(r"`(/[^`]*)`", sentence.group(1))) == PUBLIC
    answered: dict[str, int] = {}
    with env.srv.client() as c:
        for method, path, _ in _endpoints(env.srv):
            if path == "/docs/assets/{name}":
                urls = [f"/docs/assets/{n}" for n in DOCS_ASSETS]
            else:
                urls = [_url(path)]
            for url in urls:
                r = c.request(method, url, **SAMPLES.get((method, path), {}))
                answered[f"{method} {url}"] = r.status_code
                if path in PUBLIC:
                    assert r.status_code == 200 and r.content, (method, url, r.text[:200])
                else:
                    _assert_error(r, 401, "unauthorized")
    assert sum(s == 200 for s in answered.values()) == len(PUBLIC) - 1 + len(DOCS_ASSETS)


def test_both_header_forms_work(env: Env) -> None:
    body = {"query": "lantern", "collection": "docs", "mode": "keyword"}
    with env.srv.client() as c:
        for headers in (_bearer(env.keys.reader), {"authorization": f"bearer {env.keys.reader}"},
                        {"X-API-Key": env.keys.reader}, {"x-api-key": env.keys.reader}):
            r = c.post("/search", json=body, headers=headers)
            assert r.status_code == 200, (headers.keys(), r.text)
            assert {h["doc_id"] for h in r.json()["hits"]} == {"d1", "d2", "d3"}


@pytest.mark.embedded_only(
    reason="keys in a file; on PostgreSQL they are rows (tests/e2e/test_postgres_shared.py)")
def test_scopes_are_enforced(env: Env) -> None:
    k = env.keys
    search_docs = {"json": {"query": "lantern", "collection": "docs", "mode": "keyword"}}
    search_other = {"json": {"query": "lantern", "collection": "other", "mode": "keyword"}}
    upsert = {"json": {"documents": [{"id": "w1", "text": "a lantern written by a writer"}]}}
    cases: list[tuple[str, str, str, dict[str, Any], int]] = [
        # reader: read on docs, nothing else
        (k.reader, "POST", "/search", search_docs, 200),
        (k.reader, "GET", "/search", {"params": {"q": "lantern", "collection": "docs"}}, 200),
        (k.reader, "GET", "/collections/docs/documents/d1", {}, 200),
        (k.reader, "POST", "/search", search_other, 403),
        (k.reader, "POST", "/ask", {"json": {"question": "lantern?", "collection": "docs"}}, 200),
        (k.reader, "POST", "/ask", {"json": {"question": "x", "collection": "other"}}, 403),
        (k.reader, "GET", "/search", {"params": {"q": "lantern", "collection": "other"}}, 403),
        (k.reader, "GET", "/collections/other/documents/o1", {}, 403),
        (k.reader, "POST", "/collections/docs/documents", upsert, 403),
        (k.reader, "DELETE", "/collections/docs/documents/d1", {}, 403),
        (k.reader, "POST", "/collections/docs/documents/delete", {"json": {"ids": ["d1"]}}, 403),
        (k.reader, "POST", "/collections", {"json": {"name": "mine"}}, 403),
        (k.reader, "DELETE", "/collections/docs", {}, 403),
        # Not tied to one collection: these need a grant on "*".
        (k.reader, "GET", "/metrics", {}, 403),
        (k.reader, "POST", "/embed", {"json": {"texts": ["x"]}}, 403),
        (k.reader, "GET", "/v1/models", {}, 403),
        # An unknown collection outside the scope is 403, not 404: no probing for names.
        (k.reader, "POST", "/search", {"json": {"query": "x", "collection": "nope"}}, 403),
        (k.reader, "POST", "/collections/nope/documents", upsert, 403),
        # writer: write on docs (which includes read), not admin, nothing on other
        (k.writer, "POST", "/search", search_docs, 200),
        (k.writer, "POST", "/collections/docs/documents", upsert, 200),
        (k.writer, "DELETE", "/collections/docs/documents/w1", {}, 200),
        (k.writer, "POST", "/collections/docs/documents/delete", {"json": {"ids": ["zz"]}}, 200),
        (k.writer, "POST", "/collections/other/documents", upsert, 403),
        (k.writer, "POST", "/search", search_other, 403),
        (k.writer, "POST", "/collections", {"json": {"name": "mine"}}, 403),
        (k.writer, "DELETE", "/collections/docs", {}, 403),
        # admin on "*": everything
        (k.admin, "POST", "/search", search_other, 200),
        (k.admin, "GET", "/metrics", {}, 200),
        (k.admin, "POST", "/embed", {"json": {"texts": ["x"]}}, 200),
        (k.admin, "GET", "/v1/models", {}, 200),
        (k.admin, "POST", "/v1/embeddings", {"json": {"model": "all-MiniLM-L6-v2",
                                                      "input": "x"}}, 200),
        (k.admin, "POST", "/collections", {"json": {"name": "scratch"}}, 201),
        (k.admin, "POST", "/collections/scratch/documents", upsert, 200),
        (k.admin, "DELETE", "/collections/scratch", {}, 200),
        (k.admin, "POST", "/search", {"json": {"query": "x", "collection": "nope"}}, 404),
    ]
    with env.srv.client() as c:
        for form in (_bearer, lambda key: {"X-API-Key": key}):  # the whole script, twice
            for key, method, path, kw, status in cases:
                r = c.request(method, path, headers=form(key), **kw)
                if status == 403:
                    _assert_error(r, 403, "forbidden", key)
                else:
                    assert r.status_code == status, (method, path, r.text)
        # The reader's 403s changed nothing: docs still holds d1..d3.
        r = c.post("/search", headers=_bearer(k.admin), json={
            "query": "lantern", "collection": "docs", "mode": "keyword", "k": 50})
        assert sorted(h["doc_id"] for h in r.json()["hits"]) == ["d1", "d2", "d3"]


@pytest.mark.embedded_only(
    reason="keys in a file; on PostgreSQL they are rows (tests/e2e/test_postgres_shared.py)")
def test_listing_shows_only_readable_collections(env: Env) -> None:
    with env.srv.client() as c:
        def names(key: str) -> list[str]:
            r = c.get("/collections", headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
            return sorted(x["name"] for x in r.json()["collections"])

        assert names(env.keys.reader) == ["docs"]
        assert names(env.keys.writer) == ["docs"]
        assert names(env.keys.admin) == ["docs", "other"]


def test_keys_file_holds_hashes_only(env: Env) -> None:
    text = env.keys.path.read_text(encoding="utf-8")
    for key in (env.keys.admin, env.keys.reader, env.keys.writer):
        assert key.startswith("ss_") and len(key) > 32
        assert key not in text and key[3:] not in text
        assert hash_key(key) in text
    assert stat.S_IMODE(env.keys.path.stat().st_mode) == 0o600
    assert not env.keys.path.with_suffix(".tmp").exists()


def test_strangers_cannot_make_the_server_read_a_huge_body(
        env: Env, live_factory: Callable[..., LiveServer]) -> None:
    srv = live_factory(api_keys_file=env.keys.path, api_max_body_bytes=4096)
    payload = b'{"texts": ["' + b"y" * 200_000 + b'"]}'

    def chunked() -> Iterator[bytes]:
        for i in range(0, len(payload), 4096):
            yield payload[i:i + 4096]

    with srv.client() as c:
        sized = c.post("/embed", content=payload, headers={"content-type": "application/json"})
        _assert_error(sized, 413, "body_too_large")
        r = c.post("/embed", content=chunked(), headers={"content-type": "application/json"})
        assert r.request.headers.get("transfer-encoding") == "chunked"
        _assert_error(r, 413, "body_too_large")
