"""Embeddings from any server speaking OpenAI's ``POST {base_url}/embeddings`` wire format.

OpenAI, Azure OpenAI, Infinity, TEI and Ollama accept the same request, so one adapter covers
them. Batching, concurrency, retries, fail-fast and metering are ``HttpEmbedder``'s; this
module says only what OpenAI's format is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from semsearch.adapters.embedders.http_base import (
    HttpEmbedder,
    retry_after_seconds,
    token_count,
)
from semsearch.core.types import InputType

# Output sizes of well-known hosted models, so their identity needs no network round trip.
KNOWN_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
                    "text-embedding-ada-002": 1536}
_retry_after = retry_after_seconds  # its name before the shared base existed


class OpenAICompatibleEmbedder(HttpEmbedder):
    """Thread-safe. ``close()`` (or ``with``) releases the pooled connections.

    ``input_type`` is not sent: the OpenAI format has no query/passage switch, so asymmetric
    models need their prefixes in the text itself."""

    PROVIDER: ClassVar[str] = "openai-compatible"
    URL_EXAMPLE: ClassVar[str] = "http://host:port/v1"
    KNOWN_DIMENSIONS: ClassVar[Mapping[str, int]] = KNOWN_DIMENSIONS
    DEFAULT_MAX_INPUT_TOKENS: ClassVar[int] = 8191
    DEFAULT_BATCH_SIZE: ClassVar[int] = 64

    def _endpoint(self, base_url: str) -> str:
        return base_url.rstrip("/") + "/embeddings"

    def _request_body(self, texts: list[str], input_type: InputType) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._model, "input": texts, "encoding_format": "float"}
        if self._dimensions is not None:
            body["dimensions"] = self._dimensions
        return body

    def _read_payload(self, payload: Any, n: int) -> tuple[list[Any], int | None]:
        items = sorted(payload["data"], key=lambda d: int(d["index"]))
        if [int(d["index"]) for d in items] != list(range(n)):
            raise ValueError(f"{len(items)} embeddings for {n} inputs")
        usage = payload.get("usage") or {}
        return ([d["embedding"] for d in items],
                token_count(usage.get("prompt_tokens", usage.get("total_tokens"))))
