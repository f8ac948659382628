"""The HTTP service: a thin layer over the library, built by ``create_app``.

The engine (store, cache, model) is opened once in the app's lifespan, never at import or
per request; ``/readyz`` turns true only after the model has embedded a first text.

``/docs`` loads Swagger UI from this server (files shipped by the ``fastapi-offline``
package), not from a CDN, so it works offline and behind firewalls. There is no ``/redoc``:
ReDoc always fetches its logo from its vendor's CDN."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from semsearch.api import errors
from semsearch.api.auth import KeyStore
from semsearch.api.errors import ApiError, error_response
from semsearch.api.metrics import Metrics
from semsearch.api.state import AppState
from semsearch.config import Settings
from semsearch.ports import NoTelemetry


class BodyCap:
    """Counts the bytes a request body really carries: a chunked upload sends no
    Content-Length for ``limits_and_timing`` to check, and would otherwise be read whole
    (before authentication) however large it is."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # An HTTPException passes through FastAPI's body reading unchanged.
                raise HTTPException(413, f"request body is over the limit of {self.limit:,} "
                                    "bytes (SEMSEARCH_API_MAX_BODY_BYTES)")
            return message

        await self.app(scope, counted, send)


class RequestTiming:
    """Refuses a declared body over the limit, and times every request: the Prometheus
    histogram, the telemetry span that parents the route's own and the duration metric.

    A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's
    BaseHTTPMiddleware runs the rest of the app in a task of its own and streams the
    response back through a memory channel. With the dependencies moved onto the event loop
    too, the HTTP layer's CPU per request fell to 0.66x (bench/RESULTS.md, "the HTTP
    path")."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, limit = self.state, self.state.settings.api_max_body_bytes
        metrics = state.metrics
        assert metrics is not None  # made with the app
        path: str = scope["path"]
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                metrics.errors.labels(code="body_too_large").inc()
                refusal = error_response(
                    413, "body_too_large", f"request body of {int(value):,} bytes is over the "
                    f"limit of {limit:,} (SEMSEARCH_API_MAX_BODY_BYTES)", path=path)
                await refusal(scope, receive, send)
                return
        started = time.perf_counter()
        status = 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # The engine's telemetry (a no-op unless SEMSEARCH_OTLP_ENDPOINT is set): the
        # request's span parents the search's, which the route opens in a worker thread
        # that inherits this context.
        tel = state.engine.telemetry if state.engine is not None else NoTelemetry()
        method: str = scope["method"]
        with tel.span("semsearch.request", {"http.request.method": method,
                                            "url.path": path}) as span:
            await self.app(scope, receive, sent)
            route = getattr(scope.get("route"), "path", "unmatched")
            span.set({"http.route": route, "http.response.status_code": status})
        elapsed = time.perf_counter() - started
        metrics.requests.labels(route=route, method=method, status=str(status)).observe(elapsed)
        tel.observe("semsearch.request.duration", elapsed,
                    {"http.route": route, "http.request.method": method,
                     "http.response.status_code": status}, description="request latency")


# The documentation pages' assets, by the name they are served under: a fixed list, so the
# public asset route can hand out nothing else.
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "favicon.png": "image/png"}

# Swagger UI needs its inline start-up script and styles and data: images; anything else
# from elsewhere is blocked by the browser before a request leaves.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")


def _docs_asset(name: str) -> Path:
    return Path(str(resources.files("fastapi_offline") / "static" / name))


def served_settings(settings: Settings, lanes: int) -> Settings:
    """The settings the server opens its engine with: with batching on and several calls in
    flight, the local model gets as many single-thread sessions (SEMSEARCH_EMBEDDER_WORKERS,
    unless set), so each call runs on its own. (Gathering cache writes,
    SEMSEARCH_CACHE_WRITE_DELAY_MS, was measured too: 0.96-1.08x with SQLite, so it stays
    off by default.)"""
    if (lanes > 1 and settings.batch_max_texts > 1
            and "embedder_workers" not in settings.model_fields_set):
        return settings.model_copy(update={"embedder_workers": lanes})
    return settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from semsearch.wiring import open_engine

        lanes = settings.batch_workers or os.cpu_count() or 1
        engine = open_engine(served_settings(settings, lanes))
        # Concurrent requests share model calls (SEMSEARCH_BATCH_MAX_TEXTS=0: off).
        engine.batch_embeddings(settings.batch_wait_ms, settings.batch_max_texts, lanes)
        state.engine = engine
        try:
            engine.warm_up()  # load the model now: /readyz turns true only after
            state.ready = True
            yield
        finally:
            state.ready = False
            engine.close()

    app = FastAPI(title="semsearch", version="0.1.0", lifespan=lifespan,
                  description="Embedding and semantic search: dense, BM25 and hybrid. With "
                  "API keys configured, use Authorize with a key from `semsearch keys create`.",
                  docs_url=None, redoc_url=None)
    from semsearch.wiring import make_key_storage

    # The keys file, or the shared database's table when SEMSEARCH_STORE is set.
    state = AppState(settings=settings, keys=KeyStore(make_key_storage(settings)))
    state.metrics = Metrics(state)
    app.state.semsearch = state
    errors.install(app)
    app.add_middleware(BodyCap, limit=settings.api_max_body_bytes)

    app.add_middleware(RequestTiming, state=state)

    from semsearch.api.ask import router as ask_router
    from semsearch.api.relevance import router as relevance_router
    from semsearch.api.routes import router

    app.include_router(relevance_router)  # first: its .../{doc_id:path}/similar is more specific
    app.include_router(router)
    app.include_router(ask_router)
    from semsearch.api.tuning import router as tuning_router

    app.include_router(tuning_router)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        html = Path(str(resources.files("semsearch") / "web" / "index.html"))
        return HTMLResponse(html.read_text(encoding="utf-8"))

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json", title="semsearch API", oauth2_redirect_url=None,
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png",
            # No validator badge: it would send the schema to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None})
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> FileResponse:
        media_type = DOCS_ASSETS.get(name)
        if media_type is None:
            raise ApiError(404, "not_found", f"no documentation asset {name!r}")
        return FileResponse(_docs_asset(name), media_type=media_type,
                            headers={"Cache-Control": "public, max-age=86400"})

    return app
