"""Embeddings from any server speaking OpenAI's ``POST {base_url}/embeddings`` wire format.

OpenAI, Azure OpenAI, Infinity, TEI and Ollama accept the same request, so one adapter covers
them. What it adds over a bare HTTP call is what a long ingest needs from a remote, metered,
rate-limited and occasionally failing service:

* inputs are checked (empty, too long) before any money is spent;
* batches are bounded by item count *and* token budget, because servers limit both;
* batches go out with bounded concurrency over one pooled client, and come back in order;
* 429/5xx/timeouts/dropped connections/garbled bodies are retried with full-jitter
  exponential backoff that defers to the server's ``Retry-After``;
* errors a retry cannot fix (bad key, unknown model, wrong vector size) fail on the first try;
* every HTTP call is metered: successes via ``record_call``; each failed call as an error,
  and each retry as a retry, so ``calls + errors`` is the number of requests sent.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError, InputError, NotFoundError
from semsearch.ports import Tokenizer, Vectors

# Output sizes of well-known hosted models, so their identity needs no network round trip.
KNOWN_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
                    "text-embedding-ada-002": 1536}
PROBE_TEXT = "dimension probe"


class EmbedderRejectedInputError(InputError, BackendError):
    """The server refused the request as invalid (400/422 and other 4xx): retrying is futile.
    Both an InputError (the fix is in what was sent) and a BackendError (a backend said no)."""


class EmbedderModelNotFoundError(NotFoundError, BackendError):
    """The server answered 404, usually an unknown model name or a wrong base URL."""


class _Retryable(Exception):
    """One failed attempt that a later attempt may fix; carries the server's wait hint."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class OpenAICompatibleEmbedder:
    """Thread-safe. ``close()`` (or ``with``) releases the pooled connections."""

    def __init__(self, *, base_url: str, model: str, api_key: str | None, tokenizer: Tokenizer,
                 dimensions: int | None = None, dimension: int | None = None,
                 revision: str | None = None, max_input_tokens: int = 8191,
                 truncate: bool = False, batch_size: int = 64, max_batch_tokens: int = 16000,
                 concurrency: int = 4, timeout: float = 30.0, max_retries: int = 5,
                 backoff_base: float = 0.5, backoff_max: float = 30.0, normalize: bool = True,
                 transport: httpx.BaseTransport | None = None,
                 extra_headers: Mapping[str, str] | None = None,
                 api_key_header: str = "Authorization",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        parts = urlsplit(base_url)
        try:
            host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        except ValueError:  # a non-numeric port
            host = ""
        if parts.scheme not in ("http", "https") or not host:
            raise InputError(f"embedder base URL {base_url!r} must look like http://host:port/v1")
        if min(batch_size, max_input_tokens, concurrency, max_retries + 1) < 1:
            raise InputError("batch_size, max_input_tokens and concurrency must be >= 1, "
                             "max_retries >= 0")
        if max_batch_tokens < max_input_tokens:
            # Otherwise one maximal input alone would overflow a batch's token budget.
            raise InputError(f"max_batch_tokens ({max_batch_tokens}) must be >= "
                             f"max_input_tokens ({max_input_tokens})")
        if dimensions is not None and dimension is not None and dimensions != dimension:
            raise InputError(f"dimensions={dimensions} (requested) contradicts "
                             f"dimension={dimension} (expected)")
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._tokenizer = tokenizer
        self._dimensions = dimensions
        self._dimension = dimensions or dimension or KNOWN_DIMENSIONS.get(model)
        # The same model name on two servers may be two different models (or quantizations),
        # so the default revision pins the endpoint and they never share cached vectors.
        self._revision = revision or host + parts.path.rstrip("/")
        self._max_input_tokens = max_input_tokens
        self._truncate = truncate
        self._batch_size = batch_size
        self._max_batch_tokens = max_batch_tokens
        self._concurrency = concurrency
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._normalize = normalize
        self._sleep = sleep
        self._identity: EmbedderIdentity | None = None
        headers = {"User-Agent": "semsearch", **(extra_headers or {})}
        if api_key:
            headers[api_key_header] = (f"Bearer {api_key}"
                                       if api_key_header.lower() == "authorization" else api_key)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.Client(headers=headers, timeout=timeout, limits=limits,
                                    transport=transport)
        self.meter = ProviderMeter()

    @property
    def identity(self) -> EmbedderIdentity:
        """Probes the server once (one tiny request) if the output size is not yet known."""
        if self._identity is None:
            if self._dimension is None:
                probe = self._call([PROBE_TEXT], self._tokenizer.count_tokens(PROBE_TEXT))
                self._dimension = int(probe.shape[1])
            self._identity = EmbedderIdentity(
                provider="openai-compatible", model=self._model, revision=self._revision,
                dimension=self._dimension, normalized=self._normalize, metric="cosine",
                max_tokens=self._max_input_tokens)
        return self._identity

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAICompatibleEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        """Vectors in input order. ``input_type`` is not sent: the OpenAI format has no
        query/passage switch, so asymmetric models need their prefixes in the text itself."""
        prepared, counts = self._prepare(texts)
        dim = self.identity.dimension
        if not prepared:
            return np.zeros((0, dim), dtype=np.float32)
        spans = self._batches(counts)

        def run(span: tuple[int, int]) -> Vectors:
            return self._call(prepared[span[0]:span[1]], sum(counts[span[0]:span[1]]))

        if len(spans) == 1:
            parts = [run(spans[0])]
        else:
            with ThreadPoolExecutor(min(self._concurrency, len(spans)), "embed") as pool:
                futures = [pool.submit(run, s) for s in spans]
                try:
                    parts = [f.result() for f in futures]
                except BaseException:
                    for f in futures:  # queued batches are pointless once one has failed
                        f.cancel()
                    raise
        out = np.concatenate(parts).astype(np.float32, copy=False)
        if self._normalize:
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out

    def _prepare(self, texts: Sequence[str]) -> tuple[list[str], list[int]]:
        """Validate everything before sending anything; truncate at a token boundary."""
        prepared: list[str] = []
        counts: list[int] = []
        cut = 0
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"text #{i} is empty; nothing to embed")
            n = self._tokenizer.count_tokens(text)
            if n > self._max_input_tokens:
                if not self._truncate:
                    raise InputError(
                        f"text #{i} has {n} tokens but {self._model!r} accepts at most "
                        f"{self._max_input_tokens}; shorten it or enable truncation")
                end = self._tokenizer.token_spans(text)[self._max_input_tokens - 1][1]
                text = text[:end]
                n = self._tokenizer.count_tokens(text)
                cut += 1
            prepared.append(text)
            counts.append(n)
        if cut:
            self.meter.add(truncated=cut)
        return prepared, counts

    def _batches(self, counts: Sequence[int]) -> list[tuple[int, int]]:
        """Contiguous [start, end) spans, none over ``batch_size`` items or the token budget."""
        spans: list[tuple[int, int]] = []
        start = tokens = 0
        for i, n in enumerate(counts):
            if i > start and (i - start >= self._batch_size
                              or tokens + n > self._max_batch_tokens):
                spans.append((start, i))
                start, tokens = i, 0
            tokens += n
        spans.append((start, len(counts)))
        return spans

    def _call(self, inputs: list[str], estimated_tokens: int) -> Vectors:
        """One batch, with retries. Sleeps hold no lock, so other batches keep flowing."""
        body: dict[str, Any] = {"model": self._model, "input": inputs, "encoding_format": "float"}
        if self._dimensions is not None:
            body["dimensions"] = self._dimensions
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                vectors, tokens = self._attempt(body, len(inputs))
            except _Retryable as exc:
                self.meter.add(errors=1)
                if attempt >= self._max_retries:
                    raise BackendError(f"embedding request to {self._url} failed after "
                                       f"{attempt + 1} attempts: {exc}") from None
                self.meter.add(retries=1)
                cap = min(self._backoff_max, self._backoff_base * 2 ** attempt)
                delay = exc.retry_after if exc.retry_after is not None else random.uniform(0, cap)
                self._sleep(delay)
                attempt += 1
                continue
            except BackendError:
                self.meter.add(errors=1)
                raise
            self.meter.record_call(len(inputs), estimated_tokens if tokens is None else tokens,
                                   time.perf_counter() - started)
            return vectors

    def _attempt(self, body: Mapping[str, Any], n: int) -> tuple[Vectors, int | None]:
        """Send once; classify the outcome as success, retryable or final."""
        try:
            resp = self._client.post(self._url, json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {self._timeout:g}s (timeout)") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error ({type(exc).__name__}: {exc})") from None
        status = resp.status_code
        if 200 <= status < 300:
            return self._parse(resp, n)
        what = f"HTTP {status}: {_server_message(resp)}"
        if status in (408, 429) or status >= 500:
            raise _Retryable(what, _retry_after(resp.headers.get("retry-after")))
        where = f"embedding request to {self._url}"
        if status in (401, 403):
            raise BackendError(f"{where} was refused ({what}); check SEMSEARCH_EMBEDDER_API_KEY")
        if status == 404:
            raise EmbedderModelNotFoundError(
                f"{where} failed ({what}); check the model name {self._model!r} and base URL")
        raise EmbedderRejectedInputError(f"{where} was rejected ({what})")

    def _parse(self, resp: httpx.Response, n: int) -> tuple[Vectors, int | None]:
        try:
            payload = resp.json()
            items = sorted(payload["data"], key=lambda d: int(d["index"]))
            if [int(d["index"]) for d in items] != list(range(n)):
                raise ValueError(f"{len(items)} embeddings for {n} inputs")
            rows = [d["embedding"] for d in items]
            if not all(isinstance(r, list) and r for r in rows):
                raise ValueError("embeddings are not float arrays (encoding_format=float)")
            usage = payload.get("usage") or {}
            used = usage.get("prompt_tokens", usage.get("total_tokens"))
            tokens = int(used) if isinstance(used, int | float) else None
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise _Retryable(f"malformed response body ({type(exc).__name__}: {exc})") from None
        expected = self._dimension or len(rows[0])  # unknown only while probing
        got = next((len(r) for r in rows if len(r) != expected), None)
        if got is not None:
            raise BackendError(
                f"{self._url} returned {got}-dimensional vectors for {self._model!r}, expected "
                f"{expected}; set `dimensions` to have the server shorten them, or `dimension` "
                f"to the model's real size")
        try:
            vectors = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise _Retryable(f"malformed embedding values ({exc})") from None
        if not np.isfinite(vectors).all():
            raise _Retryable("malformed embedding values (NaN or infinity)")
        return vectors, tokens


def _server_message(resp: httpx.Response) -> str:
    """The error text from OpenAI's, TEI's or FastAPI's error shapes, on one short line."""
    try:
        payload = resp.json()
        err = payload.get("error") or payload.get("detail") or payload.get("message")
        msg = str(err.get("message", err)) if isinstance(err, dict) else str(err or resp.text)
    except (ValueError, AttributeError):
        msg = resp.text
    return " ".join(msg.split())[:300] or resp.reason_phrase


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None
