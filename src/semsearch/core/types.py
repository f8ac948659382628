"""Value types shared by every layer. Frozen so that no stage can rewrite another's data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class InputType(StrEnum):
    """Some models embed queries and passages differently; the cache must tell them apart."""

    QUERY = "query"
    PASSAGE = "passage"


class Mode(StrEnum):
    DENSE = "dense"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class EmbedderIdentity:
    """Everything that changes the vector space. Two identities that differ must never share
    vectors: it keys the cache and is stamped on every collection."""

    provider: str
    model: str
    revision: str
    dimension: int
    normalized: bool = True
    metric: str = "cosine"
    max_tokens: int = 256
    # Input types the model treats differently (an asymmetric model embeds a query unlike a
    # passage); the cache key always includes the type, so declaring them is informational.
    input_types: tuple[str, ...] = ("query", "passage")

    def key(self) -> str:
        return "|".join(
            [self.provider, self.model, self.revision, str(self.dimension),
             "norm" if self.normalized else "raw", self.metric]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "model": self.model, "revision": self.revision,
            "dimension": self.dimension, "normalized": self.normalized, "metric": self.metric,
            "max_tokens": self.max_tokens, "input_types": list(self.input_types),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbedderIdentity:
        return cls(
            provider=str(data["provider"]), model=str(data["model"]),
            revision=str(data["revision"]), dimension=int(data["dimension"]),
            normalized=bool(data.get("normalized", True)), metric=str(data.get("metric", "cosine")),
            max_tokens=int(data.get("max_tokens", 256)),
            input_types=tuple(data.get("input_types", ("query", "passage"))),
        )


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def content_hash(self) -> str:
        """Hash of everything that affects chunks and vectors; unchanged hash -> skip."""
        payload = json.dumps([self.title, self.text, dict(self.metadata)], sort_keys=True,
                             ensure_ascii=False, default=str)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Chunk:
    """A span of a document small enough for the model's window.

    ``text`` is the span itself; ``embed_text`` is what the model and keyword index see (the
    document title kept with every chunk)."""

    id: str
    doc_id: str
    ordinal: int
    text: str
    start: int
    end: int
    title: str = ""

    @property
    def embed_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class ComponentScore:
    rank: int
    score: float


@dataclass(frozen=True)
class Hit:
    doc_id: str
    chunk_id: str
    score: float
    components: Mapping[str, ComponentScore]
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # where the chunk lies in its document: what context assembly merges by (not sent out)
    ordinal: int = 0
    start: int = 0
    end: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id, "chunk_id": self.chunk_id, "score": self.score,
            "components": {k: {"rank": v.rank, "score": v.score}
                           for k, v in self.components.items()},
            "text": self.text, "title": self.title, "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str


@dataclass(frozen=True)
class ChatUsage:
    """Tokens of one generation; ``estimated`` when the server did not report them (some
    servers send no usage on a stream) and they were counted here instead."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True)
class Completion:
    text: str
    usage: ChatUsage
    model: str  # the model the server says answered
    finish_reason: str = ""
