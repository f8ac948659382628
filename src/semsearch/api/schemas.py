"""Wire types of the HTTP API, kept apart from the engine's types so either can change
without the other. Limits are enforced here (texts per request) and in the app (body size,
characters per text), each with a message that names the limit."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from semsearch.api.errors import TOKEN_ARRAYS

ModeName = Literal["hybrid", "dense", "keyword"]
FusionName = Literal["rrf", "minmax", "zscore"]


class ErrorBody(BaseModel):
    message: str = Field(description="what was wrong and what to do")
    type: str = Field(description="OpenAI's error class: invalid_request_error, "
                      "authentication_error, permission_error, conflict_error, server_error")
    param: str | None = Field(default=None, description="the request field at fault, if one")
    code: str = Field(description="stable machine-readable error code")


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


QUERY_NAMES = ("give the query as 'query' or as 'q', not both", "the query is missing: send "
               "it as 'query' (or 'q')")


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str | None = Field(default=None, min_length=1,
                              description="the query text; 'q' is accepted too (give one)")
    q: str | None = Field(default=None, min_length=1,
                          description="the query text under GET /search's name; same as 'query'")
    collection: str
    k: int = Field(default=10, ge=1, le=1000)
    mode: ModeName = "hybrid"
    filter: dict[str, Any] | None = None
    fusion: FusionName | None = Field(
        default=None, description="hybrid fusion; unset: the collection's tuned default "
        "(semsearch tune), else rrf")
    weights: dict[str, float] | None = None
    rrf_k: int | None = Field(default=None, ge=1)
    candidates: int | None = Field(default=None, ge=1, le=10000)
    group: bool = True
    title_weight: float | None = Field(
        default=None, gt=0, le=100, description="BM25 weight of the title field against "
        "the body (1: as one field)")
    mmr: float | None = Field(
        default=None, ge=0, le=1, description="maximal marginal relevance lambda: re-order "
        "for diversity (1: relevance only, 0: novelty only)")
    rerank: int | None = Field(
        default=None, ge=0, le=1000, description="re-score the top N with the configured "
        "re-ranker (0: off; unset: SEMSEARCH_RERANK_TOP)")
    plus: list[str] = Field(default_factory=list, max_length=64, description=(
        "vector arithmetic: texts added to the query vector (the query, if given, is one "
        "more); the search is then dense"))
    minus: list[str] = Field(default_factory=list, max_length=64,
                             description="vector arithmetic: texts subtracted")
    plus_ids: list[str] = Field(default_factory=list, max_length=64,
                                description="vector arithmetic: documents added, by id")
    minus_ids: list[str] = Field(default_factory=list, max_length=64,
                                 description="vector arithmetic: documents subtracted, by id")

    @model_validator(mode="after")
    def _one_query(self) -> SearchBody:
        if self.query is not None and self.q is not None:
            raise PydanticCustomError("query_names", QUERY_NAMES[0])
        if self.query is None and self.q is None and not (self.plus or self.plus_ids):
            raise PydanticCustomError("query_missing", QUERY_NAMES[1])
        return self

    @property
    def text(self) -> str:
        """The query text; empty for a pure vector-arithmetic search."""
        text = self.query if self.query is not None else self.q
        return text or ""


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


TOKEN_ARRAYS_MESSAGE = (
    "input holds token ids, which this server does not accept: it tokenizes text itself, with "
    "its own model's tokenizer (OpenAI's token ids mean nothing to it). Send the texts as "
    "strings; in LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)")


def _is_token_array(value: Any) -> bool:
    def ints(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in v)

    return ints(value) or (isinstance(value, list) and bool(value)
                           and all(ints(v) for v in value))


class OpenAIEmbeddingsRequest(BaseModel):
    """OpenAI's /v1/embeddings body. OpenAI also takes token-id arrays for ``input``; they are
    refused with a 400 that says what to send instead (a validation error would only say
    "Input should be a valid string")."""

    input: str | list[str] = Field(description="a text or a list of texts (strings only; "
                                   "token-id arrays are refused)")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_arrays(cls, value: Any) -> Any:
        if _is_token_array(value):
            raise PydanticCustomError(TOKEN_ARRAYS, TOKEN_ARRAYS_MESSAGE)
        return value
