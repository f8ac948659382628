"""Embeddings from Amazon Bedrock (``SEMSEARCH_EMBEDDER=bedrock``) through boto3's
``bedrock-runtime`` client and its ``InvokeModel`` operation.

Two model families speak two request shapes on the same operation:

* **Titan Text Embeddings** (``amazon.titan-embed-text-v2:0``; V1 too): one text per call,
  ``{"inputText", "dimensions": 256|512|1024, "normalize": true}``, answered with
  ``{"embedding": [...], "inputTextTokenCount": n}``. A batch is therefore many calls, sent
  with bounded concurrency.
* **Cohere Embed v3 hosted on Bedrock** (``cohere.embed-english-v3``,
  ``cohere.embed-multilingual-v3``): up to 96 texts per call, ``{"texts", "input_type":
  "search_query"|"search_document"}``, answered with ``{"embeddings": [[...]]}``; tokens come
  from the ``X-Amzn-Bedrock-Input-Token-Count`` response header.

Credentials come from boto3's standard chain (environment, shared files, SSO, container or
instance roles), resolved on the first call, not when the embedder is built, so commands that
never embed never touch them. botocore's own retries are switched off: throttling and server
errors are retried here, with full-jitter exponential backoff, so every attempt is metered the
way the other HTTP providers meter theirs (``calls + errors`` is the number of requests sent)
and the retry budget is ``SEMSEARCH_EMBEDDER_MAX_RETRIES`` whatever botocore's defaults are.
Errors a retry cannot fix (access denied, an unknown model, bad credentials, a wrong vector
size) fail on the first attempt with what to check. boto3 is an optional extra, imported only
here and only when a Bedrock embedder is built."""

from __future__ import annotations

import contextvars
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from importlib import util
from typing import Any

import numpy as np

from semsearch.adapters.embedders.http_base import (
    MALFORMED,
    EmbedderModelNotFoundError,
    EmbedderRejectedInputError,
    Retryable,
    backoff_delay,
)
from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError, InputError
from semsearch.ports import Tokenizer, Vectors

INSTALL_HINT = 'pip install -e ".[bedrock]"'
TOKEN_HEADER = "x-amzn-bedrock-input-token-count"
# Bedrock's errors that a later attempt may not meet: throttling, a model warming up, a
# server fault (429, 408 and 5xx statuses are retried whatever their code).
RETRYABLE_CODES = frozenset({"ThrottlingException", "ModelNotReadyException",
                             "ServiceUnavailableException", "InternalServerException",
                             "ModelTimeoutException", "RequestTimeout", "RequestTimeoutException"})
CREDENTIAL_CODES = frozenset({"UnrecognizedClientException", "InvalidSignatureException",
                              "SignatureDoesNotMatch", "ExpiredTokenException",
                              "MissingAuthenticationTokenException", "IncompleteSignature",
                              "InvalidClientTokenId"})
_NAMES_A_MODEL = re.compile(r"model (identifier|id)\b|\bmodel\b.*\b(not found|invalid)", re.I)


@dataclass(frozen=True)
class ModelFamily:
    """What differs between the model families Bedrock hosts for text embeddings."""

    name: str
    dimension: int  # the output size when none is requested
    dimensions: tuple[int, ...]  # sizes that may be requested; () = fixed
    max_tokens: int
    max_chars: int
    batch: int  # texts per InvokeModel call
    revision: str  # what the model id's version suffix is called when it has none

    def body(self, texts: Sequence[str], input_type: InputType, dimensions: int | None,
             truncate: bool) -> dict[str, Any]:
        if self.name == "cohere":
            return {"texts": list(texts), "truncate": "END" if truncate else "NONE",
                    "input_type": ("search_query" if input_type == InputType.QUERY
                                   else "search_document")}
        (text,) = texts
        body: dict[str, Any] = {"inputText": text}
        if self.name == "titan-v2":
            body["dimensions"] = dimensions or self.dimension
            body["normalize"] = True
        return body


TITAN_V2 = ModelFamily("titan-v2", 1024, (256, 512, 1024), 8192, 50_000, 1, "0")
TITAN_V1 = ModelFamily("titan-v1", 1536, (), 8192, 50_000, 1, "1")
COHERE_V3 = ModelFamily("cohere", 1024, (), 512, 2048, 96, "v3")
KNOWN_MODELS = {"amazon.titan-embed-text-v2:0": TITAN_V2, "amazon.titan-embed-text-v1": TITAN_V1,
                "cohere.embed-english-v3": COHERE_V3, "cohere.embed-multilingual-v3": COHERE_V3}


def model_family(model: str) -> ModelFamily:
    """The family of a model id, an inference profile (``us.amazon.titan-...``) or an ARN."""
    tail = model.rsplit("/", 1)[-1]
    if "amazon.titan-embed-text-v2" in tail:
        return TITAN_V2
    if "amazon.titan-embed-text-v1" in tail:
        return TITAN_V1
    if re.search(r"cohere\.embed-(english|multilingual)-v3", tail):
        return COHERE_V3
    raise InputError(f"the bedrock embedder does not know the model {model!r}; it speaks "
                     f"{', '.join(KNOWN_MODELS)} (SEMSEARCH_EMBEDDER_MODEL)")


class _Skipped(Exception):
    """A call not sent because another call of the same batch had already failed."""


class BedrockEmbedder:
    """Thread-safe. ``close()`` (or ``with``) releases the pooled connections."""

    def __init__(self, *, model: str, tokenizer: Tokenizer, region: str | None = None,
                 endpoint_url: str | None = None, dimensions: int | None = None,
                 revision: str | None = None, max_input_tokens: int | None = None,
                 truncate: bool = False, batch_size: int | None = None, concurrency: int = 4,
                 timeout: float = 30.0, max_retries: int = 5, backoff_base: float = 0.5,
                 backoff_max: float = 20.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if util.find_spec("boto3") is None:
            raise InputError(f"the bedrock embedder needs boto3: {INSTALL_HINT}")
        family = model_family(model)
        if dimensions is not None and dimensions != family.dimension \
                and dimensions not in family.dimensions:
            allowed = family.dimensions or (family.dimension,)
            raise InputError(f"{model!r} makes {' or '.join(map(str, allowed))}-dimensional "
                             f"vectors, not {dimensions} (SEMSEARCH_EMBEDDER_DIMENSIONS)")
        if min(concurrency, max_retries + 1, batch_size or 1, max_input_tokens or 1) < 1:
            raise InputError("concurrency, batch_size and max_input_tokens must be >= 1, "
                             "max_retries >= 0")
        if endpoint_url and not re.match(r"https?://[^/\s]+", endpoint_url):
            raise InputError(f"Bedrock endpoint URL {endpoint_url!r} must look like "
                             "https://bedrock-runtime.us-east-1.amazonaws.com")
        import boto3
        from botocore.exceptions import BotoCoreError

        try:  # reads AWS_PROFILE and the shared config files; no network
            self._session = boto3.session.Session()
        except BotoCoreError as exc:
            raise InputError(f"cannot set up AWS for the bedrock embedder: {exc}") from None
        # SEMSEARCH_EMBEDDER_REGION, else AWS_REGION (what the other SDKs read; botocore
        # does not), else AWS_DEFAULT_REGION or the profile's region, as boto3 resolves it.
        resolved = region or os.environ.get("AWS_REGION") or self._session.region_name
        if not resolved:
            raise InputError("the bedrock embedder needs an AWS region: set "
                             "SEMSEARCH_EMBEDDER_REGION or AWS_REGION (e.g. us-east-1)")
        self._region: str = resolved
        self._endpoint_url = endpoint_url or None
        self._model = model
        self._family = family
        self._tokenizer = tokenizer
        self._dimension = dimensions or family.dimension
        self._max_input_tokens = max_input_tokens or family.max_tokens
        self._truncate = truncate
        self._batch_size = min(batch_size or family.batch, family.batch)
        self._concurrency = concurrency
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._client: Any = None
        self._client_lock = threading.Lock()
        tail = model.rsplit("/", 1)[-1]  # an ARN ends with the model id
        self._identity = EmbedderIdentity(
            provider="bedrock", model=model,
            revision=revision or (tail.rpartition(":")[2] if ":" in tail else family.revision),
            dimension=self._dimension, normalized=True, metric="cosine",
            max_tokens=self._max_input_tokens)
        self.meter = ProviderMeter()

    @property
    def identity(self) -> EmbedderIdentity:
        return self._identity

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def region(self) -> str:
        return self._region

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> BedrockEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- embedding ---------------------------------------------------------------------------

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        """Vectors in input order, L2-normalized. Cohere models embed a query unlike a passage
        (``input_type``); Titan has no such switch and embeds both alike."""
        prepared, counts = self._prepare(texts)
        if not prepared:
            return np.zeros((0, self._dimension), dtype=np.float32)
        size = self._batch_size
        spans = [(i, min(i + size, len(prepared))) for i in range(0, len(prepared), size)]
        failed = threading.Event()

        def run(span: tuple[int, int]) -> Vectors:
            # Titan is a call per text: once one has failed for good (access denied, an
            # unknown model), the calls not yet sent are pointless, whatever their order.
            if failed.is_set():
                raise _Skipped
            start, end = span
            try:
                return self._call(prepared[start:end], input_type, sum(counts[start:end]))
            except BaseException:
                failed.set()
                raise

        if len(spans) == 1:
            parts = [run(spans[0])]
        else:
            with ThreadPoolExecutor(min(self._concurrency, len(spans)), "bedrock") as pool:
                # each in a copy of this context: a caller collecting its metering sees it
                futures = [pool.submit(contextvars.copy_context().run, run, s) for s in spans]
                try:
                    parts = [f.result() for f in futures]
                except _Skipped:
                    wait(futures)
                    raise next(e for f in futures if not f.cancelled()
                               and (e := f.exception()) is not None
                               and not isinstance(e, _Skipped)) from None
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        out = np.concatenate(parts).astype(np.float32, copy=False)
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out

    def _prepare(self, texts: Sequence[str]) -> tuple[list[str], list[int]]:
        """Validate everything before sending anything (and spending anything): Bedrock
        refuses texts over the model's character limit, and over its token window unless
        told to truncate."""
        prepared: list[str] = []
        counts: list[int] = []
        cut = 0
        limit_chars, limit_tokens = self._family.max_chars, self._max_input_tokens
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"text #{i} is empty; nothing to embed")
            n = self._tokenizer.count_tokens(text)
            if len(text) > limit_chars or n > limit_tokens:
                if not self._truncate:
                    raise InputError(
                        f"text #{i} has {len(text):,} characters and {n:,} tokens but "
                        f"{self._model!r} accepts at most {limit_chars:,} characters and "
                        f"{limit_tokens:,} tokens; shorten it or set "
                        "SEMSEARCH_EMBEDDER_TRUNCATE=true")
                text = text[:limit_chars]
                spans = self._tokenizer.token_spans(text)
                if len(spans) > limit_tokens:
                    text = text[:spans[limit_tokens - 1][1]]
                n = self._tokenizer.count_tokens(text)
                cut += 1
            prepared.append(text)
            counts.append(max(n, 1))
        if cut:
            self.meter.add(truncated=cut)
        return prepared, counts

    def _call(self, texts: list[str], input_type: InputType, estimated_tokens: int) -> Vectors:
        """One InvokeModel call, with retries. Sleeps hold no lock, so other calls flow."""
        body = json.dumps(self._family.body(texts, input_type, self._dimension,
                                            self._truncate)).encode()
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                vectors, tokens = self._attempt(body, len(texts))
            except Retryable as exc:
                self.meter.add(errors=1)
                if attempt >= self._max_retries:
                    raise BackendError(
                        f"Amazon Bedrock {self._model!r} in {self._region} failed after "
                        f"{attempt + 1} attempts: {exc}; raise SEMSEARCH_EMBEDDER_MAX_RETRIES, "
                        "lower SEMSEARCH_EMBEDDER_CONCURRENCY, or ask AWS for a higher quota"
                    ) from None
                self.meter.add(retries=1)
                self._sleep(backoff_delay(attempt, self._backoff_base, self._backoff_max))
                attempt += 1
                continue
            except BackendError:
                self.meter.add(errors=1)
                raise
            self.meter.record_call(len(texts), estimated_tokens if tokens is None else tokens,
                                   time.perf_counter() - started)
            return vectors

    def _bedrock(self) -> Any:
        """The client, made on first use: making it resolves the credentials."""
        with self._client_lock:
            if self._client is None:
                from botocore.config import Config

                config = Config(
                    region_name=self._region, connect_timeout=self._timeout,
                    read_timeout=self._timeout, max_pool_connections=self._concurrency,
                    retries={"mode": "standard", "total_max_attempts": 1},
                    user_agent_extra="semsearch")
                self._client = self._session.client(
                    "bedrock-runtime", region_name=self._region,
                    endpoint_url=self._endpoint_url, config=config)
            return self._client

    def _attempt(self, body: bytes, n: int) -> tuple[Vectors, int | None]:
        """Send once; classify the outcome as success, retryable or final."""
        from botocore import exceptions as bx

        try:
            response = self._bedrock().invoke_model(
                modelId=self._model, body=body, contentType="application/json",
                accept="application/json")
            raw = response["body"].read()
        except bx.ClientError as exc:
            raise self._classify(exc) from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError,
                bx.CredentialRetrievalError) as exc:
            raise BackendError(
                f"no usable AWS credentials for Amazon Bedrock ({exc}); set AWS_PROFILE, "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with an IAM role"
            ) from None
        except (bx.ConnectionError, bx.HTTPClientError, bx.ResponseStreamingError) as exc:
            raise Retryable(f"connection error ({type(exc).__name__}: {exc})") from None
        except bx.BotoCoreError as exc:
            raise BackendError(f"Amazon Bedrock call for {self._model!r} in {self._region} "
                               f"failed: {exc}") from None
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return self._parse(raw, n, headers.get(TOKEN_HEADER))

    def _classify(self, exc: Any) -> Exception:
        """A Bedrock error -> retryable, or a final error that says what to check."""
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        message = " ".join(str(error.get("Message") or exc).split())[:300]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        what = f"{code or 'HTTP ' + str(status)}: {message}"
        where = f"Amazon Bedrock model {self._model!r} in region {self._region}"
        if code in RETRYABLE_CODES or status in (408, 429) or status >= 500:
            return Retryable(what)
        if code == "AccessDeniedException":
            return BackendError(
                f"{where} refused access ({what}); check that the model is enabled for the "
                f"account in {self._region} (Bedrock console, Model access) and that the "
                "credentials allow bedrock:InvokeModel on it")
        if code in CREDENTIAL_CODES or status in (401, 403):
            return BackendError(
                f"{where} refused the credentials ({what}); check AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)")
        if code == "ResourceNotFoundException" or status == 404 or (
                code == "ValidationException" and (_NAMES_A_MODEL.search(message)
                                                   or self._model in message)):
            return EmbedderModelNotFoundError(
                f"{where} was not found ({what}); check SEMSEARCH_EMBEDDER_MODEL (e.g. "
                f"amazon.titan-embed-text-v2:0) and that the model is offered in "
                f"{self._region} (SEMSEARCH_EMBEDDER_REGION)")
        if code == "ServiceQuotaExceededException":
            return BackendError(f"{where}: the account's quota is used up ({what})")
        if code == "ValidationException" or 400 <= status < 500:
            return EmbedderRejectedInputError(f"{where} rejected the request ({what})")
        return BackendError(f"{where} failed ({what})")

    def _parse(self, raw: bytes, n: int, token_header: str | None) -> tuple[Vectors, int | None]:
        try:
            payload = json.loads(raw)
            if self._family.name == "cohere":
                rows = payload["embeddings"]
                if isinstance(rows, dict):  # embedding_types asked for: {"float": [...]}
                    rows = rows["float"]
                body_tokens = None
            else:
                rows = [payload["embedding"]]
                body_tokens = payload.get("inputTextTokenCount")
            if not isinstance(rows, list) or len(rows) != n:
                raise ValueError(f"{len(rows)} embeddings for {n} texts")
            if not all(isinstance(r, list) and r for r in rows):
                raise ValueError("embeddings are not float arrays")
            vectors = np.asarray(rows, dtype=np.float32)
            if vectors.ndim != 2 or not np.isfinite(vectors).all():
                raise ValueError("embeddings are ragged, NaN or infinite")
        except MALFORMED as exc:
            raise Retryable(f"malformed response body ({type(exc).__name__}: {exc})") from None
        if vectors.shape[1] != self._dimension:
            raise BackendError(
                f"Amazon Bedrock returned {vectors.shape[1]}-dimensional vectors for "
                f"{self._model!r}, expected {self._dimension} (SEMSEARCH_EMBEDDER_DIMENSIONS)")
        return vectors, _token_count(token_header, body_tokens)


def _token_count(header: str | None, body: object) -> int | None:
    """Tokens billed: the response header Bedrock sends on every InvokeModel answer, else
    Titan's ``inputTextTokenCount``; None lets the caller fall back to its estimate."""
    for value in (header, body):
        try:
            count = int(str(value))
        except ValueError:
            continue
        if count >= 0:
            return count
    return None
