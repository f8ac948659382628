"""A collection's search defaults over HTTP: read them with their history, set them, revert
the last revision. Tuning itself (``semsearch tune``) runs hundreds of searches per setting
and reads a labelled folder on the machine: it is a CLI job, not a request.

Reading takes read access to the collection; changing takes admin. Bad values are 422 with
the field named, an unknown collection 404, a revert with nothing to revert 409."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from semsearch.api.auth import require
from semsearch.api.errors import ApiError
from semsearch.api.routes import ERRORS, EngineDep, Who
from semsearch.api.schemas import FusionName

router = APIRouter(responses=ERRORS, tags=["collections"])


class Weights(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dense: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    keyword: float = Field(default=1.0, ge=0, allow_inf_nan=False)


class SearchDefaultsOut(BaseModel):
    fusion: FusionName
    rrf_k: int
    candidates: int
    weights: dict[str, float] | None = Field(description="null: every component weighs 1")
    title_weight: float | None = Field(description="null: title and text as one field")


class CurrentDefaults(SearchDefaultsOut):
    revision: int = Field(description="the stored revision in force; 0: the built-in values")


class RevisionOut(BaseModel):
    revision: int
    settings: dict[str, Any]
    note: dict[str, Any] = Field(description="who stored it and why (tune: its train scores)")
    created_at: str
    reverted_at: str | None
    live: bool


class SearchDefaultsResponse(BaseModel):
    collection: str = Field(description="the name defaults belong to (versions share it)")
    current: CurrentDefaults
    builtin: SearchDefaultsOut
    history: list[RevisionOut]


class SearchDefaultsBody(BaseModel):
    """What to set; what is left out keeps its built-in value (a revision is whole)."""

    model_config = ConfigDict(extra="forbid")
    fusion: FusionName | None = None
    rrf_k: int | None = Field(default=None, ge=1, le=100_000)
    candidates: int | None = Field(default=None, ge=1, le=1000)
    weights: Weights | None = None
    title_weight: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)
    note: str | None = Field(default=None, max_length=500, description="why, for the history")


class RevertResponse(BaseModel):
    collection: str
    reverted: int = Field(description="the revision undone")
    current: CurrentDefaults


@router.get("/collections/{name}/search-defaults", response_model=SearchDefaultsResponse)
def get_search_defaults(name: str, engine: EngineDep, who: Who) -> dict[str, Any]:
    """The defaults searches of this collection use for what they leave unset, and every
    revision stored (``semsearch tune``, or PUT here)."""
    from semsearch.services.tune import defaults_history

    require(who, name, "read")
    return defaults_history(engine, name).to_dict()


@router.put("/collections/{name}/search-defaults", response_model=SearchDefaultsResponse)
def put_search_defaults(name: str, body: SearchDefaultsBody, engine: EngineDep,
                        who: Who) -> dict[str, Any]:
    """Store a new revision of the defaults (revert undoes it)."""
    from semsearch.services.tune import defaults_history, store_defaults

    require(who, name, "admin")
    values = body.model_dump(exclude_none=True, exclude={"note"})
    note: dict[str, Any] = {"by": "api"}
    if body.note:
        note["note"] = body.note
    store_defaults(engine, name, values, note)
    return defaults_history(engine, name).to_dict()


@router.post("/collections/{name}/search-defaults/revert", response_model=RevertResponse)
def revert_search_defaults(name: str, engine: EngineDep, who: Who) -> dict[str, Any]:
    """Undo the revision in force: the one before it is in force again, or the built-in
    values after the first. 409 when the built-ins are already in force."""
    from semsearch.services.tune import collection_key, defaults_history, revert_defaults

    require(who, name, "admin")
    if defaults_history(engine, name).current.revision == 0:
        raise ApiError(409, "nothing_to_revert", f"collection {collection_key(name)!r} uses "
                       "the built-in search defaults; there is no revision to revert")
    undone, now = revert_defaults(engine, name)
    return {"collection": collection_key(name), "reverted": undone.revision,
            "current": now.to_dict()}
