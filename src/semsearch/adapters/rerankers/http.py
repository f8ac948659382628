"""A re-ranker behind an HTTP ``/rerank`` API. Four wire formats, one client:

* **TEI** (Hugging Face text-embeddings-inference): ``POST {url}/rerank`` with
  ``{"query", "texts", "raw_scores", "truncate"}``, answered by a bare list
  ``[{"index", "score"}, ...]`` sorted by score;
* **Infinity**: ``POST {url}/rerank`` with ``{"query", "documents", "model",
  "return_documents", "top_n"}``, answered by ``{"results": [{"index",
  "relevance_score"}, ...]}``;
* **Cohere**: ``POST {url}/v2/rerank`` (or ``/v1/rerank`` when the URL ends in ``/v1``) with
  ``{"model", "query", "documents", "top_n"}``, same answer shape, Bearer key;
* **Jina**: ``POST {url}/v1/rerank``, same body and answer shape as Cohere's.

Every format returns results sorted by relevance, so scores are mapped back to the texts by
``index``; an answer that misses a text, repeats one, or carries a non-number is malformed.
The habits are the HTTP embedders' (``adapters/embedders/http_base``): a timeout on every
call, retries with full-jitter backoff on 408/429/5xx, dropped connections and garbled
bodies, honouring ``Retry-After``; no retry for what a retry cannot fix (401/403: the key;
404: the URL or the model; other 4xx: what was sent). Texts go in batches no larger than
the server accepts (TEI's default ``--max-client-batch-size`` is 32)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from semsearch.adapters.embedders.http_base import (
    MALFORMED,
    Retryable,
    backoff_delay,
    http_url,
    post_once,
    retry_after_seconds,
    server_message,
)
from semsearch.core.metering import ProviderMeter
from semsearch.errors import BackendError, InputError, NotFoundError


class RerankerModelNotFoundError(NotFoundError, BackendError):
    """The server answered 404: the URL is wrong, or it does not serve the model."""


class RerankerRejectedInputError(InputError, BackendError):
    """The server refused the request as invalid (400/413/422...): retrying is futile."""


@dataclass(frozen=True)
class WireFormat:
    """What differs between the four APIs: the path, the body, where the scores are."""

    name: str
    path: Callable[[str], str]  # base URL path (no trailing slash) -> the endpoint's path
    batch_size: int  # most texts per request the server accepts by default
    needs_model: bool

    def body(self, query: str, texts: list[str], model: str) -> dict[str, Any]:
        if self.name == "tei":
            return {"query": query, "texts": texts, "raw_scores": False, "truncate": True}
        body: dict[str, Any] = {"query": query, "documents": texts, "top_n": len(texts)}
        if model:
            body["model"] = model
        if self.name in ("infinity", "jina"):
            body["return_documents"] = False
        return body

    def results(self, payload: Any) -> list[tuple[Any, Any]]:
        """(index, score) pairs as the server gave them; raises one of MALFORMED."""
        if self.name == "tei":
            if not isinstance(payload, list):
                raise TypeError("the answer is not a list of {index, score}")
            return [(r["index"], r["score"]) for r in payload]
        rows = payload["results"]
        if not isinstance(rows, list):
            raise TypeError("results is not a list")
        return [(r["index"], r["relevance_score"]) for r in rows]


def _suffix(path: str, default_version: str) -> str:
    """``/rerank`` after an explicit API version in the URL, else after the default one."""
    if path.endswith(("/v1", "/v2")):
        return path + "/rerank"
    return path + (f"/{default_version}/rerank" if default_version else "/rerank")


FORMATS: Mapping[str, WireFormat] = {
    "tei": WireFormat("tei", lambda p: p + "/rerank", 32, needs_model=False),
    "infinity": WireFormat("infinity", lambda p: p + "/rerank", 64, needs_model=False),
    "cohere": WireFormat("cohere", lambda p: _suffix(p, "v2"), 1000, needs_model=True),
    "jina": WireFormat("jina", lambda p: _suffix(p, "v1"), 1000, needs_model=True),
}


def scores_by_index(pairs: Sequence[tuple[Any, Any]], n: int) -> list[float]:
    """One score per input text, in input order, from pairs in any order. Every index in
    0..n-1 exactly once, every score a finite number, or ValueError/TypeError."""
    scores: list[float | None] = [None] * n
    for index, score in pairs:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"index {index!r} is not one of the {n} texts sent")
        if isinstance(score, bool) or not isinstance(score, int | float) \
                or not math.isfinite(score):
            raise TypeError(f"score {score!r} of text {index} is not a finite number")
        if scores[index] is not None:
            raise ValueError(f"text {index} is scored twice")
        scores[index] = float(score)
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        raise ValueError(f"{len(missing)} of {n} texts have no score (first: {missing[0]})")
    return [float(s) for s in scores if s is not None]


class HttpReranker:
    """Thread-safe. ``close()`` releases the pooled connections."""

    def __init__(self, *, base_url: str, wire_format: str = "tei", model: str = "",
                 api_key: str | None = None, timeout: float = 30.0, max_retries: int = 3,
                 batch_size: int | None = None, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        try:
            self._format = FORMATS[wire_format]
        except KeyError:
            raise InputError(f"unknown SEMSEARCH_RERANKER_FORMAT {wire_format!r}; known: "
                             f"{', '.join(sorted(FORMATS))}") from None
        found = http_url(base_url)
        if found is None:
            raise InputError(f"SEMSEARCH_RERANKER_URL {base_url!r} must look like "
                             "http://host:port")
        parts, host = found
        if self._format.needs_model and not model:
            raise InputError(f"the {wire_format} re-rank API needs SEMSEARCH_RERANKER_MODEL "
                             "(e.g. rerank-v3.5 for Cohere, jina-reranker-v2-base-multilingual "
                             "for Jina)")
        if max_retries < 0 or (batch_size is not None and batch_size < 1):
            raise InputError("max_retries must be >= 0 and batch_size >= 1")
        path = self._format.path(parts.path.rstrip("/"))
        self._url = f"{parts.scheme}://{host}{path}"
        self._endpoint = host + path
        self._model = model
        self._batch_size = batch_size or self._format.batch_size
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        headers = {"User-Agent": "semsearch"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(headers=headers, timeout=timeout, transport=transport,
                                    limits=httpx.Limits(max_connections=8))
        self.meter = ProviderMeter()

    @property
    def identity(self) -> Mapping[str, str]:
        return {"provider": "http", "format": self._format.name, "model": self._model,
                "endpoint": self._endpoint}

    @property
    def url(self) -> str:
        return self._url

    def close(self) -> None:
        self._client.close()

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query to re-rank by is empty")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"text #{i} to re-rank is not a string")
        scores: list[float] = []
        for start in range(0, len(texts), self._batch_size):
            batch = texts[start:start + self._batch_size]
            scores += self._call(query, batch)
        return scores

    # -- one batch ---------------------------------------------------------------------------

    def _call(self, query: str, texts: list[str]) -> list[float]:
        body = self._format.body(query, texts, self._model)
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                scores = self._attempt(body, len(texts))
            except Retryable as exc:
                self.meter.add(errors=1)
                if attempt >= self._max_retries:
                    raise BackendError(f"re-rank request to {self._url} failed after "
                                       f"{attempt + 1} attempts: {exc}") from None
                self.meter.add(retries=1)
                self._sleep(exc.retry_after if exc.retry_after is not None else
                            backoff_delay(attempt, self._backoff_base, self._backoff_max))
                attempt += 1
                continue
            except BackendError:
                self.meter.add(errors=1)
                raise
            self.meter.record_call(len(texts), 0, time.perf_counter() - started)
            return scores

    def _attempt(self, body: Mapping[str, Any], n: int) -> list[float]:
        resp = post_once(self._client, self._url, body, self._timeout)
        status = resp.status_code
        if 200 <= status < 300:
            try:
                return scores_by_index(self._format.results(resp.json()), n)
            except MALFORMED as exc:
                raise Retryable(f"malformed response body ({type(exc).__name__}: "
                                f"{exc})") from None
        what = f"HTTP {status}: {server_message(resp)}"
        if status in (408, 429) or status >= 500:
            raise Retryable(what, retry_after_seconds(resp.headers.get("retry-after")))
        raise self._refusal(status, what)

    def _refusal(self, status: int, what: str) -> BackendError:
        where = f"re-rank request to {self._url}"
        if status in (401, 403):
            return BackendError(f"{where} was refused ({what}); check "
                                "SEMSEARCH_RERANKER_API_KEY")
        if status == 404:
            model = f" and the model {self._model!r}" if self._model else ""
            return RerankerModelNotFoundError(
                f"{where} failed ({what}); check SEMSEARCH_RERANKER_URL{model}")
        return RerankerRejectedInputError(f"{where} was rejected ({what})")
