"""Routes: each checks access, calls one library function, shapes the answer."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
import orjson
import pydantic_core
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from semsearch.api.auth import Principal, require
from semsearch.api.errors import ApiError
from semsearch.api.metrics import Metrics
from semsearch.api.schemas import (
    QUERY_NAMES,
    CollectionCreate,
    DeleteRequest,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    FusionName,
    ModeName,
    OpenAIEmbeddingsRequest,
    SearchBody,
    SearchResponse,
    UpsertRequest,
)
from semsearch.api.state import state_of
from semsearch.config import Settings
from semsearch.core.filters import parse_filter
from semsearch.core.types import Document, InputType, Mode
from semsearch.core.unicode import require_unicode
from semsearch.errors import InputError
from semsearch.runtime.embedding import EmbedStats
from semsearch.runtime.engine import Engine

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 502)}
router = APIRouter(responses=ERRORS)


async def engine_of(request: Request) -> Engine:
    """Async: it reads memory only, and a dependency run in the thread pool costs a
    hand-over each way on every request."""
    state = state_of(request)
    engine = state.engine
    if engine is None or not state.ready:
        raise ApiError(503, "not_ready", "the service is starting; retry shortly",
                       {"Retry-After": "1"})
    return engine


# Declared as security schemes (not plain headers) so /docs offers an Authorize button that
# sends the key; neither refuses by itself: authenticate() decides, with our 401 body.
_bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="an API key from `semsearch keys create`, as a Bearer token")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                        description="the same API key, in the X-API-Key header")


async def principal_of(request: Request,
                       bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                       x_api_key: Annotated[str | None, Depends(_api_key)]) -> Principal:
    """On the event loop when the keys are a file (a stat): a dependency run in the thread
    pool costs a hand-over each way on every request. Keys in a database are checked in
    the pool, so a database that does not answer holds up this request, not the server."""
    presented = bearer.credentials.strip() if bearer is not None else x_api_key
    keys = state_of(request).keys
    if keys.storage.local:
        principal: Principal = keys.authenticate(presented)
    else:
        principal = await run_in_threadpool(keys.authenticate, presented)
    return principal


EngineDep = Annotated[Engine, Depends(engine_of)]
Who = Annotated[Principal, Depends(principal_of)]


def _settings(request: Request) -> Settings:
    return state_of(request).settings


def _metrics(request: Request) -> Metrics:
    metrics = state_of(request).metrics
    assert metrics is not None  # made with the app
    return metrics


def _check_texts(request: Request, engine: Engine, texts: list[str], what: str = "texts",
                 param: str | None = None) -> list[int]:
    """Refuse what is over a limit or empty; return each text's tokens (with the model's
    special tokens, before truncation), counted once here and reused for ``usage``."""
    s = _settings(request)
    if len(texts) > s.api_max_texts:
        raise ApiError(413, "too_many_texts", f"{len(texts):,} {what} in one request; the limit "
                       f"is {s.api_max_texts:,} (SEMSEARCH_API_MAX_TEXTS)", param=param)
    for i, t in enumerate(texts):
        if len(t) > s.api_max_text_chars:
            raise ApiError(413, "text_too_long", f"{what} #{i} has {len(t):,} characters; the "
                           f"limit is {s.api_max_text_chars:,} (SEMSEARCH_API_MAX_TEXT_CHARS)",
                           param=param)
        if not t.strip():
            raise ApiError(422, "empty_text", f"{what} #{i} is empty; nothing to embed",
                           param=param)
    return _count_tokens(request, engine, texts, what, param)


def _count_tokens(request: Request, engine: Engine, texts: list[str], what: str,
                  param: str | None) -> list[int]:
    """Token counts, stopping at the first text past SEMSEARCH_API_MAX_REQUEST_TOKENS so an
    oversized request costs no more than the limit to refuse."""
    limit = _settings(request).api_max_request_tokens
    tok = engine.embedder.tokenizer
    counts: list[int] = []
    total = 0
    for i, t in enumerate(texts):
        try:
            require_unicode(t, f"{what} #{i}")  # the tokenizer cannot take it either
        except InputError as exc:
            raise ApiError(422, "invalid_text", str(exc), param=param) from None
    for t in texts:
        counts.append(tok.count_tokens(t) + 2)  # + the model's [CLS] and [SEP]
        total += counts[-1]
        if total > limit:
            raise ApiError(413, "too_many_tokens", f"the {what} in this request hold over "
                           f"{limit:,} tokens ({total:,} in the first {len(counts):,} of "
                           f"{len(texts):,}); the limit is {limit:,} per request "
                           "(SEMSEARCH_API_MAX_REQUEST_TOKENS): send fewer per request",
                           param=param)
    return counts


def _embed(request: Request, engine: Engine, texts: list[str], input_type: InputType,
           counts: list[int]) -> tuple[np.ndarray, int, EmbedStats]:
    from semsearch.services.search import embed_texts

    stats = EmbedStats()
    vectors = embed_texts(engine, texts, input_type, stats)
    window = engine.embedder.identity.max_tokens
    tokens = sum(min(n, window) for n in counts)  # what the model sees: truncated to its window
    _metrics(request).observe_embedding(stats.tokens, stats.cost, stats.cache_hits,
                                                stats.cache_misses)
    return vectors, tokens, stats


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
def readyz(request: Request) -> JSONResponse:
    """Model loaded, store and vector index reachable (readiness: what Kubernetes probes).
    A shared database or a Milvus that cannot be reached makes it false until it is back."""
    state = state_of(request)
    ready = state.ready and state.engine is not None
    if ready and not state.store_reachable():
        return JSONResponse({"ready": False,
                             "reason": "the store or the vector index cannot be reached"},
                            status_code=503)
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/metrics", tags=["health"])
def metrics(request: Request, who: Who) -> Response:
    """Prometheus metrics."""
    require(who, None, "read")
    return Response(generate_latest(_metrics(request).registry),
                    media_type=CONTENT_TYPE_LATEST)


@router.post("/embed", response_model=EmbedResponse, tags=["embed"])
def embed(body: EmbedRequest, request: Request, engine: EngineDep, who: Who) -> Response:
    """Embed a batch of texts as queries or passages (through the cache)."""
    require(who, None, "read")
    counts = _check_texts(request, engine, body.texts, param="texts")
    vectors, tokens, stats = _embed(request, engine, body.texts, InputType(body.input_type),
                                    counts)
    identity = engine.embedder.identity
    return json_response({"model": identity.to_dict(), "dimension": identity.dimension,
                          "vectors": wide(vectors), "tokens": tokens,
                          "cache_hits": stats.cache_hits})


def json_response(content: dict[str, Any]) -> Response:
    """``content`` as JSON, written by orjson, numpy arrays included: give vectors as
    float64 (``wide``) for the same numbers ``vectors.tolist()`` gave through FastAPI
    (float32 values printed as the doubles they are), without validating and encoding every
    float in Python: pydantic's validation and dump were ~4 % of the server's GIL-holding
    samples under load (py-spy --gil; bench/RESULTS.md, "the HTTP path")."""
    try:
        body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # what orjson cannot write (an integer past 64 bits in metadata)
        body = pydantic_core.to_json(content, inf_nan_mode="null")
    return Response(body, media_type="application/json")


def wide(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float64)


def _served_models(engine: Engine) -> list[str]:
    model = engine.embedder.identity.model
    short = model.rsplit("/", 1)[-1]
    return [model] if short == model else [model, short]


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "semsearch"}


def _model_not_found(engine: Engine, model_id: str) -> ApiError:
    return ApiError(404, "model_not_found", f"model {model_id!r} is not served here; "
                    f"GET /v1/models lists {', '.join(_served_models(engine))}", param="model")


@router.get("/v1/models", tags=["openai"])
def openai_models(engine: EngineDep, who: Who) -> dict[str, Any]:
    """The model ids ``/v1/embeddings`` accepts."""
    require(who, None, "read")
    return {"object": "list", "data": [_model(m) for m in _served_models(engine)]}


@router.get("/v1/models/{model_id:path}", tags=["openai"])
def openai_model(model_id: str, engine: EngineDep, who: Who) -> dict[str, Any]:
    """One model (``client.models.retrieve``); ids may hold a '/'."""
    require(who, None, "read")
    if model_id not in _served_models(engine):
        raise _model_not_found(engine, model_id)
    return _model(model_id)


@router.post("/v1/embeddings", tags=["openai"])
def openai_embeddings(body: OpenAIEmbeddingsRequest, request: Request, engine: EngineDep,
                      who: Who) -> Response:
    """OpenAI's embeddings API: the official clients work unchanged against this base URL."""
    require(who, None, "read")
    if body.model not in _served_models(engine):
        raise _model_not_found(engine, body.model)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts:
        raise ApiError(422, "empty_input", "input is an empty list", param="input")
    dim = engine.embedder.identity.dimension
    if body.dimensions is not None and body.dimensions != dim:
        raise ApiError(422, "dimensions_unsupported",
                       f"model {body.model!r} produces {dim} dimensions and was not trained to "
                       f"be shortened; omit 'dimensions' or pass {dim}", param="dimensions")
    counts = _check_texts(request, engine, texts, "input", param="input")
    vectors, tokens, _ = _embed(request, engine, texts, InputType.PASSAGE, counts)
    data = []
    for i, v in enumerate(vectors):
        emb: Any = (base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode(
            "ascii") if body.encoding_format == "base64" else wide(v))
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return json_response({"object": "list", "data": data, "model": body.model,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _search(request: Request, engine: Engine, who: Principal, body: SearchBody) -> Response:
    """The search as SearchResponse's JSON, written by orjson from the hits' own values:
    built as a SearchResponse, each hit was validated once into the model and again by
    FastAPI's response check before being dumped, ~5 % of the server's GIL-holding samples
    under load (bench/RESULTS.md, "the HTTP path"). The numbers are those SearchResponse
    gave (ranks and scores as floats)."""
    from semsearch.services.search import SearchRequest, search

    require(who, body.collection, "read")
    if body.text:
        _check_texts(request, engine, [body.text], "query",
                     param="query" if body.query else "q")
    for param in ("plus", "minus"):
        if texts := getattr(body, param):
            _check_texts(request, engine, texts, "text", param=param)
    req = SearchRequest(query=body.text, mode=Mode(body.mode), k=body.k,
                        filter=parse_filter(body.filter), fusion=body.fusion,
                        weights=body.weights, rrf_k=body.rrf_k, candidates=body.candidates,
                        group=body.group, title_weight=body.title_weight, mmr=body.mmr,
                        rerank=body.rerank, plus=tuple(body.plus), minus=tuple(body.minus),
                        plus_ids=tuple(body.plus_ids), minus_ids=tuple(body.minus_ids))
    result = search(engine, body.collection, req)
    _metrics(request).observe_stages(result.timings, body.mode)
    hits = [_as_floats(h.to_dict()) for h in result.hits]
    return json_response({"hits": hits, "total": len(hits),
                          "timings_ms": {k: round(v * 1000, 3)
                                         for k, v in result.timings.items()},
                          "version": result.version})


def _as_floats(hit: dict[str, Any]) -> dict[str, Any]:
    """A hit's numbers as HitOut declares them (floats), as Python
    floats: orjson writes a numpy float32 with fewer digits than pydantic did."""
    hit["score"] = float(hit["score"])
    for part in hit["components"].values():
        part["rank"], part["score"] = float(part["rank"]), float(part["score"])
    return hit


@router.get("/search", response_model=SearchResponse, tags=["search"])
def search_get(request: Request, engine: EngineDep, who: Who, collection: str,
               q: Annotated[str | None, Query(min_length=1, description=(
                   "the query text; 'query' is accepted too (give one)"))] = None,
               query: Annotated[str | None, Query(min_length=1, description=(
                   "the query text under POST /search's name; same as 'q'"))] = None,
               k: Annotated[int, Query(ge=1, le=1000)] = 10, mode: ModeName = "hybrid",
               fusion: FusionName | None = None,
               mmr: Annotated[float | None, Query(ge=0, le=1)] = None,
               rerank: Annotated[int | None, Query(ge=0, le=1000)] = None) -> Response:
    """Search a collection (filters, weights and vector arithmetic: use POST /search)."""
    if (q is None) == (query is None):
        raise ApiError(422, "invalid_request", QUERY_NAMES[0] if q is not None else
                       QUERY_NAMES[1], param="q")
    return _search(request, engine, who, SearchBody(q=q, query=query, collection=collection,
                                                    k=k, mode=mode, fusion=fusion, mmr=mmr,
                                                    rerank=rerank))


@router.post("/search", response_model=SearchResponse, tags=["search"])
def search_post(body: SearchBody, request: Request, engine: EngineDep,
                who: Who) -> Response:
    """Search with metadata filters, fusion method and weights."""
    return _search(request, engine, who, body)


@router.get("/collections", tags=["collections"])
def list_collections(engine: EngineDep, who: Who) -> dict[str, Any]:
    from semsearch.services.collections import describe_collections

    rows = [r.to_dict() for r in describe_collections(engine) if who.allows(r.name, "read")]
    return {"collections": rows}


@router.post("/collections", status_code=201, tags=["collections"])
def create_collection(body: CollectionCreate, engine: EngineDep, who: Who) -> dict[str, Any]:
    """Create an empty collection stamped with the served embedder and chunker."""
    from semsearch.services.collections import create_collection as create

    require(who, body.name, "admin")
    info = create(engine, body.name)
    return {"name": info.name, "identity": info.identity.to_dict(),
            "chunker": dict(info.chunker)}


@router.delete("/collections/{name}", tags=["collections"])
def drop_collection(name: str, engine: EngineDep, who: Who) -> dict[str, Any]:
    from semsearch.services.collections import drop_collection as drop

    require(who, name, "admin")
    drop(engine, name)
    return {"dropped": name}


@router.post("/collections/{name}/rollback", tags=["collections"])
def rollback_collection(name: str, engine: EngineDep, who: Who) -> dict[str, Any]:
    """Serve the version that was active before the last swap; the current one is kept."""
    from semsearch.services.versions import rollback

    require(who, name, "admin")
    return rollback(engine, name)


@router.post("/collections/{name}/activate/{version}", tags=["collections"])
def activate_collection(name: str, version: int, engine: EngineDep,
                        who: Who) -> dict[str, Any]:
    """Serve a kept version (``semsearch reindex`` builds them)."""
    from semsearch.services.versions import activate

    require(who, name, "admin")
    return activate(engine, name, version)


@router.post("/collections/{name}/compact", tags=["collections"])
def compact_collection(name: str, engine: EngineDep, who: Who) -> dict[str, Any]:
    """Reclaim the space of deleted vectors and keyword entries; report bytes freed."""
    from semsearch.services.collections import compact_collection as compact

    require(who, name, "admin")
    return compact(engine, name).to_dict()


@router.post("/collections/{name}/documents", tags=["documents"])
def upsert_documents(name: str, body: UpsertRequest, request: Request, engine: EngineDep,
                     who: Who) -> dict[str, Any]:
    """Insert or replace documents (batch); unchanged ones are skipped by content hash."""
    from semsearch.services.ingest import index_documents

    require(who, name, "write")
    s = _settings(request)
    if len(body.documents) > s.api_max_texts:
        raise ApiError(413, "too_many_documents", f"{len(body.documents):,} documents in one "
                       f"request; the limit is {s.api_max_texts:,} (SEMSEARCH_API_MAX_TEXTS)",
                       param="documents")
    _count_tokens(request, engine, [f"{d.title}\n{d.text}" for d in body.documents],
                  "documents", "documents")
    docs = [Document(d.id, d.text, d.title, d.metadata) for d in body.documents]
    report = index_documents(engine, name, docs, create=False)  # unknown -> 404
    _metrics(request).observe_embedding(report.tokens, report.cost, report.cache_hits,
                                                report.cache_misses)
    return report.to_dict()


@router.get("/collections/{name}/documents/{doc_id:path}", tags=["documents"])
def get_document(name: str, doc_id: str, engine: EngineDep, who: Who) -> dict[str, Any]:
    from semsearch.services.collections import get_document as get

    require(who, name, "read")
    return get(engine, name, doc_id)


@router.delete("/collections/{name}/documents/{doc_id:path}", tags=["documents"])
def delete_document(name: str, doc_id: str, engine: EngineDep, who: Who) -> dict[str, Any]:
    from semsearch.services.ingest import delete_documents

    require(who, name, "write")
    deleted = delete_documents(engine, name, [doc_id])
    if not deleted:
        raise ApiError(404, "not_found", f"no document {doc_id!r} in collection {name!r}")
    return {"deleted": deleted}


@router.post("/collections/{name}/documents/delete", tags=["documents"])
def delete_many(name: str, body: DeleteRequest, engine: EngineDep,
                who: Who) -> dict[str, Any]:
    from semsearch.services.ingest import delete_documents

    require(who, name, "write")
    return {"deleted": delete_documents(engine, name, body.ids)}
