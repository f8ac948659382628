"""Routes past the query box: documents similar to one, near-duplicate clusters, and
recommendations from a user's history (with a cold-start fallback). Each checks access,
calls one service, shapes the answer; the wire types live here beside them.

``/collections/{name}/documents/{doc_id}/similar`` takes ids holding '/' (files indexed
from a folder): this router is included before the one serving
``/collections/{name}/documents/{doc_id}``, whose id is a path too, so a GET of an id
ending in ``/similar`` means this route."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from semsearch.api.auth import require
from semsearch.api.routes import ERRORS, EngineDep, Who, _check_texts
from semsearch.api.schemas import HitOut
from semsearch.core.filters import parse_cli_filters, parse_filter

router = APIRouter(responses=ERRORS)

DocId = Annotated[str, Field(min_length=1, max_length=512)]
StrategyName = Literal["history", "profile", "central"]


class NeighboursResponse(BaseModel):
    doc_id: str = Field(description="the document the others are similar to")
    hits: list[HitOut] = Field(description="nearest documents first, each with its best "
                               "chunk; score: that chunk's cosine to the document's vector")
    total: int
    timings_ms: dict[str, float]
    version: str = Field(description="the collection version that answered")


class MemberOut(BaseModel):
    id: str
    similarity: float = Field(description="cosine to the cluster's representative")


class PairOut(BaseModel):
    a: str
    b: str
    similarity: float


class ClusterOut(BaseModel):
    size: int
    representative: str = Field(description="the member most similar to the others: the one "
                                "to keep")
    members: list[MemberOut]
    min_similarity: float = Field(description="lowest cosine between two members (a chain of "
                                  "near-copies can fall below the threshold)")
    max_similarity: float
    pairs: list[PairOut] = Field(description="pairs at or above the threshold, most similar "
                                 "first (100 at most)")
    pair_count: int


class DuplicatesResponse(BaseModel):
    collection: str
    version: str
    threshold: float
    method: Literal["exact", "ann"] = Field(description="how the pairs were found")
    documents: int
    clusters_total: int
    duplicates: int = Field(description="documents that would go if each cluster kept its "
                            "representative")
    seconds: float
    clusters: list[ClusterOut] = Field(description="largest first")


class RatedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: DocId
    weight: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False,
                          description="how much the item counts (a rating, a dwell time)")


def _kind(value: Any) -> str:
    return "id" if isinstance(value, str) else "rated"


# An id, or {id, weight}: the discriminator picks the form, so an error names the field at
# fault (a bad weight) instead of every form's complaint.
Item = Annotated[Annotated[DocId, Tag("id")] | Annotated[RatedIn, Tag("rated")],
                 Discriminator(_kind)]


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collection: str
    positive: list[Item] = Field(
        default_factory=list, max_length=1000,
        description="liked items: ids, or {id, weight}; ids not in the collection are ignored "
        "and listed as 'unknown'")
    negative: list[Item] = Field(
        default_factory=list, max_length=1000,
        description="disliked items: steer away from them (Rocchio, beta 0.5)")
    seen: list[DocId] = Field(default_factory=list, max_length=10_000,
                              description="items never to recommend (besides the rated ones)")
    profile: str | None = Field(
        default=None, description="side information as text (stated interests): embedded as "
        "a query when no liked item is known")
    k: int = Field(default=10, ge=1, le=1000)
    filter: dict[str, Any] | None = None


class RecommendResponse(BaseModel):
    strategy: StrategyName = Field(
        description="what answered: history (liked items known), profile (no history: the "
        "profile text), central (neither: the items nearest the collection's centroid)")
    items: list[HitOut]
    unknown: list[str] = Field(description="ids of the request not in the collection, ignored")
    version: str
    timings_ms: dict[str, float]


@router.get("/collections/{name}/documents/{doc_id:path}/similar",
            response_model=NeighboursResponse, tags=["documents"])
def similar_documents(name: str, doc_id: str, engine: EngineDep, who: Who,
                      k: Annotated[int, Query(ge=1, le=1000)] = 10,
                      filters: Annotated[list[str] | None, Query(alias="filter", description=(
                          "metadata filter, repeatable: key=value or a JSON object like "
                          '{"year": {"gte": 2010}}'))] = None) -> NeighboursResponse:
    """The documents nearest a document (its near-copies first), itself left out."""
    from semsearch.services.neighbours import similar

    require(who, name, "read")
    result = similar(engine, name, doc_id, k, parse_cli_filters(list(filters or [])))
    hits = [h.to_dict() for h in result.hits]
    return NeighboursResponse(
        doc_id=doc_id, hits=hits, total=len(hits),  # type: ignore[arg-type]
        timings_ms={key: round(v * 1000, 3) for key, v in result.timings.items()},
        version=result.version)


@router.get("/collections/{name}/duplicates", response_model=DuplicatesResponse,
            tags=["documents"])
def duplicates(name: str, engine: EngineDep, who: Who,
               threshold: Annotated[float, Query(gt=0, le=1, allow_inf_nan=False, description=(
                   "cosine of document vectors at or above which two are near-copies"))] = 0.95,
               method: Literal["auto", "exact", "ann"] = "auto",
               neighbours: Annotated[int, Query(ge=1, le=1000, description=(
                   "ann: nearest documents checked per document"))] = 10,
               limit: Annotated[int, Query(ge=1, le=100_000, description=(
                   "clusters returned at most (largest first)"))] = 1000) -> DuplicatesResponse:
    """Clusters of near-duplicate documents: exact on collections up to 20,000 documents,
    by the vector index (ANN) above, or as ``method`` says."""
    from semsearch.services.dedupe import find_duplicates

    require(who, name, "read")
    report = find_duplicates(engine, name, threshold, method, neighbours, limit=limit)
    return DuplicatesResponse.model_validate(report.to_dict())


def _rated(items: list[str | RatedIn]) -> tuple[Any, ...]:
    from semsearch.services.recommend import Rated

    return tuple(Rated(i) if isinstance(i, str) else Rated(i.id, i.weight) for i in items)


@router.post("/recommend", response_model=RecommendResponse, tags=["search"])
def recommend_items(body: RecommendBody, request: Request, engine: EngineDep,
                    who: Who) -> RecommendResponse:
    """Items for a user not yet seen: from the liked (and disliked) items when any is known,
    else from the profile text, else the collection's most central items. The answer says
    which strategy answered and which ids were unknown (deleted items in a history)."""
    from semsearch.services.recommend import RecommendRequest, recommend

    require(who, body.collection, "read")
    profile = body.profile if body.profile and body.profile.strip() else ""
    if profile:
        _check_texts(request, engine, [profile], "profile", param="profile")
    req = RecommendRequest(positive=_rated(body.positive), negative=_rated(body.negative),
                           seen=tuple(body.seen), profile=profile, k=body.k,
                           filter=parse_filter(body.filter))
    result = recommend(engine, body.collection, req)
    return RecommendResponse.model_validate(result.to_dict())
