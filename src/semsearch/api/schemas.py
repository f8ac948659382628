"""Wire types of the HTTP API, kept apart from the engine's types so either can change
without the other. Limits are enforced here (texts per request) and in the app (body size,
characters per text), each with a message that names the limit."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ModeName = Literal["hybrid", "dense", "keyword"]
FusionName = Literal["rrf", "minmax", "zscore"]


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable error code")
    message: str = Field(description="what was wrong and what to do")


class ErrorResponse(BaseModel):
    error: ErrorBody


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="texts to embed")
    input_type: Literal["query", "passage"] = "passage"


class EmbedResponse(BaseModel):
    model: dict[str, Any]
    dimension: int
    vectors: list[list[float]]
    tokens: int
    cache_hits: int


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    collection: str
    k: int = Field(default=10, ge=1, le=1000)
    mode: ModeName = "hybrid"
    filter: dict[str, Any] | None = None
    fusion: FusionName = "rrf"
    weights: dict[str, float] | None = None
    rrf_k: int | None = Field(default=None, ge=1)
    candidates: int | None = Field(default=None, ge=1, le=10000)
    group: bool = True


class HitOut(BaseModel):
    doc_id: str
    chunk_id: str
    score: float
    components: dict[str, dict[str, float]]
    text: str
    title: str
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[HitOut]
    total: int
    timings_ms: dict[str, float]
    version: str = Field(default="", description="the collection version that answered")


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=512)
    text: str = ""
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(min_length=1)


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(min_length=1)


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class OpenAIEmbeddingsRequest(BaseModel):
    """OpenAI's /v1/embeddings body; ``input`` may also be token arrays, refused with 422."""

    input: str | list[str]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
