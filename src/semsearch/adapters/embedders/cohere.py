"""Embeddings from Cohere's Embed API (``POST {base_url}/v2/embed``).

Batching, concurrency, retries, fail-fast and metering are ``HttpEmbedder``'s; this module
says what Cohere's format is. What differs from OpenAI's:

* Cohere's models are asymmetric: a query and a passage are embedded differently, so the
  input type is sent (``search_query`` / ``search_document``) and never left to a default;
* at most 96 texts per request;
* Cohere truncates over-long inputs silently unless told ``truncate: NONE``; semsearch sends
  ``NONE`` so that an input it was not allowed to cut fails instead of being embedded in
  part, and ``END`` only when truncation is enabled (after cutting at its own estimate,
  which may count differently from Cohere's tokenizer);
* the tokens billed are in ``meta.billed_units.input_tokens``;
* an unknown model may come back as a 400 whose message says so, not only as a 404.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from semsearch.adapters.embedders.http_base import (
    EmbedderModelNotFoundError,
    HttpEmbedder,
    token_count,
)
from semsearch.core.types import InputType

DEFAULT_BASE_URL = "https://api.cohere.com"
MAX_TEXTS_PER_REQUEST = 96
INPUT_TYPES = {InputType.QUERY: "search_query", InputType.PASSAGE: "search_document"}
# Output size and context window of Cohere's embedding models (embed-v4.0's output size is
# its default; SEMSEARCH_EMBEDDER_DIMENSIONS asks for 256, 512 or 1024 instead).
KNOWN_MODELS: Mapping[str, tuple[int, int]] = {
    "embed-v4.0": (1536, 128000),
    "embed-english-v3.0": (1024, 512),
    "embed-multilingual-v3.0": (1024, 512),
    "embed-english-light-v3.0": (384, 512),
    "embed-multilingual-light-v3.0": (384, 512),
}
_UNKNOWN_MODEL = re.compile(r"\bmodel\b.*\b(not found|not supported|does not exist|unknown)",
                            re.IGNORECASE)


class CohereEmbedder(HttpEmbedder):
    """Thread-safe. ``close()`` (or ``with``) releases the pooled connections."""

    PROVIDER: ClassVar[str] = "cohere"
    URL_EXAMPLE: ClassVar[str] = DEFAULT_BASE_URL
    KNOWN_DIMENSIONS: ClassVar[Mapping[str, int]] = {m: d for m, (d, _) in KNOWN_MODELS.items()}
    DEFAULT_MAX_INPUT_TOKENS: ClassVar[int] = 512
    DEFAULT_BATCH_SIZE: ClassVar[int] = MAX_TEXTS_PER_REQUEST
    MAX_BATCH_SIZE: ClassVar[int | None] = MAX_TEXTS_PER_REQUEST

    def _default_max_input_tokens(self, model: str) -> int:
        known = KNOWN_MODELS.get(model)
        return known[1] if known else self.DEFAULT_MAX_INPUT_TOKENS

    def _endpoint(self, base_url: str) -> str:
        base = base_url.rstrip("/")
        # Accept the base URL with or without the API version, as Cohere's SDKs print both.
        return base + ("/embed" if base.endswith("/v2") else "/v2/embed")

    def _endpoint_revision(self, host: str, path: str) -> str:
        return host + path.removesuffix("/v2")

    def _request_body(self, texts: list[str], input_type: InputType) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model, "texts": texts, "input_type": INPUT_TYPES[input_type],
            "embedding_types": ["float"], "truncate": "END" if self._truncate else "NONE"}
        if self._dimensions is not None:
            body["output_dimension"] = self._dimensions
        return body

    def _read_payload(self, payload: Any, n: int) -> tuple[list[Any], int | None]:
        rows = payload["embeddings"]["float"]
        if not isinstance(rows, list):
            raise TypeError("embeddings.float is not an array")
        billed = (payload.get("meta") or {}).get("billed_units") or {}
        return rows, token_count(billed.get("input_tokens"))

    def _refusal(self, status: int, what: str) -> Exception:
        if status in (400, 422) and _UNKNOWN_MODEL.search(what):
            return EmbedderModelNotFoundError(
                f"embedding request to {self._url} failed ({what}); check the model name "
                f"{self._model!r} (e.g. embed-english-v3.0, embed-v4.0)")
        return super()._refusal(status, what)
