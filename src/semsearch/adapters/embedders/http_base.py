"""What every embedder behind a remote, metered, rate-limited HTTP API needs, whatever its
wire format (OpenAI's ``/embeddings``, Cohere's ``/v2/embed``):

* inputs are checked (empty, too long) before any money is spent;
* batches are bounded by item count *and* token budget, because servers limit both;
* batches go out with bounded concurrency over one pooled client, and come back in order;
* 429/5xx/timeouts/dropped connections/garbled bodies are retried with full-jitter
  exponential backoff that defers to the server's ``Retry-After``;
* errors a retry cannot fix (bad key, unknown model, wrong vector size) fail on the first try;
* every HTTP call is metered: successes via ``record_call``; each failed call as an error,
  and each retry as a retry, so ``calls + errors`` is the number of requests sent.

A provider is a subclass that says only what differs: the endpoint, the request body of a
batch, where the vectors and the billed tokens are in the answer, and which refusals mean
an unknown model. Keeping one copy of the rest keeps the providers' behaviour identical.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Self
from urllib.parse import SplitResult, urlsplit

import httpx
import numpy as np

from semsearch.core.backoff import backoff_delay as backoff_delay
from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError, InputError, NotFoundError
from semsearch.ports import Tokenizer, Vectors

PROBE_TEXT = "dimension probe"
# Any malformation of a parsed body: a later attempt may get a whole one.
MALFORMED = (ValueError, KeyError, TypeError, AttributeError, OverflowError, IndexError)


class EmbedderRejectedInputError(InputError, BackendError):
    """The server refused the request as invalid (400/422 and other 4xx): retrying is futile.
    Both an InputError (the fix is in what was sent) and a BackendError (a backend said no)."""


class EmbedderModelNotFoundError(NotFoundError, BackendError):
    """The server does not know the model (a 404, or a provider's own way of saying so), or
    the base URL is wrong. Not an InputError: no document is at fault, so a write stops
    instead of refusing every document one by one."""


class Retryable(Exception):
    """One failed attempt that a later attempt may fix; carries the server's wait hint."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def http_url(url: str) -> tuple[SplitResult, str] | None:
    """The parts of an ``http(s)://host[:port]...`` URL and its ``host[:port]``, or None when
    it has no host, another scheme, or a port that is not a number."""
    parts = urlsplit(url)
    try:
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    except ValueError:  # a non-numeric port
        return None
    return (parts, host) if parts.scheme in ("http", "https") and host else None


def post_once(client: httpx.Client, url: str, body: Mapping[str, Any],
              timeout: float) -> httpx.Response:
    """POST once; a timeout or a dropped connection is ``Retryable`` (the HTTP clients of
    embeddings and re-ranking classify the same transport failures)."""
    try:
        return client.post(url, json=body)
    except httpx.TimeoutException:
        raise Retryable(f"timed out after {timeout:g}s (timeout)") from None
    except httpx.TransportError as exc:
        raise Retryable(f"connection error ({type(exc).__name__}: {exc})") from None


class HttpEmbedder:
    """Thread-safe. ``close()`` (or ``with``) releases the pooled connections.

    Subclasses set ``PROVIDER`` and override ``_endpoint``, ``_request_body`` and
    ``_read_payload``, and ``_refusal`` when their API reports an unknown model otherwise
    than with a 404."""

    PROVIDER: ClassVar[str]
    URL_EXAMPLE: ClassVar[str] = "http://host:port"
    # Output sizes of well-known hosted models, so their identity needs no round trip.
    KNOWN_DIMENSIONS: ClassVar[Mapping[str, int]] = {}
    DEFAULT_MAX_INPUT_TOKENS: ClassVar[int] = 8191
    DEFAULT_BATCH_SIZE: ClassVar[int] = 64
    MAX_BATCH_SIZE: ClassVar[int | None] = None  # the API's hard limit of items per request

    def __init__(self, *, base_url: str, model: str, api_key: str | None, tokenizer: Tokenizer,
                 dimensions: int | None = None, dimension: int | None = None,
                 revision: str | None = None, max_input_tokens: int | None = None,
                 truncate: bool = False, batch_size: int | None = None,
                 max_batch_tokens: int | None = None,
                 concurrency: int = 4, timeout: float = 30.0, max_retries: int = 5,
                 backoff_base: float = 0.5, backoff_max: float = 30.0, normalize: bool = True,
                 transport: httpx.BaseTransport | None = None,
                 extra_headers: Mapping[str, str] | None = None,
                 api_key_header: str = "Authorization",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        found = http_url(base_url)
        if found is None:
            raise InputError(f"embedder base URL {base_url!r} must look like {self.URL_EXAMPLE}")
        parts, host = found
        max_input_tokens = (self._default_max_input_tokens(model) if max_input_tokens is None
                            else max_input_tokens)
        batch_size = self.DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        if self.MAX_BATCH_SIZE is not None and batch_size > self.MAX_BATCH_SIZE:
            raise InputError(f"batch_size {batch_size} is over the {self.PROVIDER} API's limit "
                             f"of {self.MAX_BATCH_SIZE} texts per request")
        if min(batch_size, max_input_tokens, concurrency, max_retries + 1) < 1:
            raise InputError("batch_size, max_input_tokens and concurrency must be >= 1, "
                             "max_retries >= 0")
        if max_batch_tokens is None:
            max_batch_tokens = max(16000, max_input_tokens)
        if max_batch_tokens < max_input_tokens:
            # Otherwise one maximal input alone would overflow a batch's token budget.
            raise InputError(f"max_batch_tokens ({max_batch_tokens}) must be >= "
                             f"max_input_tokens ({max_input_tokens})")
        if dimensions is not None and dimension is not None and dimensions != dimension:
            raise InputError(f"dimensions={dimensions} (requested) contradicts "
                             f"dimension={dimension} (expected)")
        self._url = self._endpoint(base_url)
        self._model = model
        self._tokenizer = tokenizer
        self._dimensions = dimensions
        self._dimension = dimensions or dimension or self.KNOWN_DIMENSIONS.get(model)
        # The same model name on two servers may be two different models (or quantizations),
        # so the default revision pins the endpoint and they never share cached vectors.
        self._revision = revision or self._endpoint_revision(host, parts.path.rstrip("/"))
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

    # -- what a provider supplies ------------------------------------------------------------

    def _default_max_input_tokens(self, model: str) -> int:
        return self.DEFAULT_MAX_INPUT_TOKENS

    def _endpoint(self, base_url: str) -> str:
        """The URL batches are POSTed to."""
        raise NotImplementedError

    def _endpoint_revision(self, host: str, path: str) -> str:
        """The default revision: the endpoint, written one way however the base URL is."""
        return host + path

    def _request_body(self, texts: list[str], input_type: InputType) -> dict[str, Any]:
        raise NotImplementedError

    def _read_payload(self, payload: Any, n: int) -> tuple[list[Any], int | None]:
        """The ``n`` vectors of a 2xx JSON body in input order, and the tokens the server
        billed (None if it does not say). Raises one of ``MALFORMED`` on a garbled body."""
        raise NotImplementedError

    def _refusal(self, status: int, what: str) -> Exception:
        """The error for a 4xx no retry can fix (``what`` names the status and the server's
        message)."""
        where = f"embedding request to {self._url}"
        if status in (401, 403):
            return BackendError(f"{where} was refused ({what}); check SEMSEARCH_EMBEDDER_API_KEY")
        if status == 402:
            return BackendError(f"{where} was refused ({what}); check the account's billing")
        if status == 404:
            return EmbedderModelNotFoundError(
                f"{where} failed ({what}); check the model name {self._model!r} and base URL")
        return EmbedderRejectedInputError(f"{where} was rejected ({what})")

    # -- the embedder ------------------------------------------------------------------------

    @property
    def identity(self) -> EmbedderIdentity:
        """Probes the server once (one tiny request) if the output size is not yet known."""
        if self._identity is None:
            if self._dimension is None:
                probe = self._call([PROBE_TEXT], self._tokenizer.count_tokens(PROBE_TEXT),
                                   InputType.QUERY)
                self._dimension = int(probe.shape[1])
            self._identity = EmbedderIdentity(
                provider=self.PROVIDER, model=self._model, revision=self._revision,
                dimension=self._dimension, normalized=self._normalize, metric="cosine",
                max_tokens=self._max_input_tokens)
        return self._identity

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        """Vectors in input order."""
        prepared, counts = self._prepare(texts)
        dim = self.identity.dimension
        if not prepared:
            return np.zeros((0, dim), dtype=np.float32)
        spans = self._batches(counts)

        def run(span: tuple[int, int]) -> Vectors:
            return self._call(prepared[span[0]:span[1]], sum(counts[span[0]:span[1]]),
                              input_type)

        if len(spans) == 1:
            parts = [run(spans[0])]
        else:
            with ThreadPoolExecutor(min(self._concurrency, len(spans)), "embed") as pool:
                # each in a copy of this context: a caller collecting its metering sees it
                futures = [pool.submit(contextvars.copy_context().run, run, s) for s in spans]
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

    def _call(self, inputs: list[str], estimated_tokens: int, input_type: InputType) -> Vectors:
        """One batch, with retries. Sleeps hold no lock, so other batches keep flowing."""
        body = self._request_body(inputs, input_type)
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                vectors, tokens = self._attempt(body, len(inputs))
            except Retryable as exc:
                self.meter.add(errors=1)
                if attempt >= self._max_retries:
                    raise BackendError(f"embedding request to {self._url} failed after "
                                       f"{attempt + 1} attempts: {exc}") from None
                self.meter.add(retries=1)
                delay = exc.retry_after if exc.retry_after is not None else backoff_delay(
                    attempt, self._backoff_base, self._backoff_max)
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
        resp = post_once(self._client, self._url, body, self._timeout)
        status = resp.status_code
        if 200 <= status < 300:
            return self._parse(resp, n)
        what = f"HTTP {status}: {server_message(resp)}"
        if status in (408, 429) or status >= 500:
            raise Retryable(what, retry_after_seconds(resp.headers.get("retry-after")))
        raise self._refusal(status, what)

    def _parse(self, resp: httpx.Response, n: int) -> tuple[Vectors, int | None]:
        try:
            rows, tokens = self._read_payload(resp.json(), n)
            if len(rows) != n:
                raise ValueError(f"{len(rows)} embeddings for {n} inputs")
            if not all(isinstance(r, list) and r for r in rows):
                raise ValueError("embeddings are not float arrays")
        except MALFORMED as exc:
            raise Retryable(f"malformed response body ({type(exc).__name__}: {exc})") from None
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
            raise Retryable(f"malformed embedding values ({exc})") from None
        if not np.isfinite(vectors).all():
            raise Retryable("malformed embedding values (NaN or infinity)")
        return vectors, tokens




def token_count(value: object) -> int | None:
    """A usage figure from a JSON body, or None when absent or not a number."""
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else None


def server_message(resp: httpx.Response) -> str:
    """The error text from OpenAI's, Cohere's, TEI's or FastAPI's error shapes, on one short
    line."""
    try:
        payload = resp.json()
        err = payload.get("error") or payload.get("detail") or payload.get("message")
        msg = str(err.get("message", err)) if isinstance(err, dict) else str(err or resp.text)
    except (ValueError, AttributeError):
        msg = resp.text
    return " ".join(msg.split())[:300] or resp.reason_phrase


def retry_after_seconds(value: str | None) -> float | None:
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
