"""The application's state, typed: one object on ``app.state.semsearch`` instead of loose
attributes, so routes and middleware read fields a type checker knows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from semsearch.config import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from semsearch.api.auth import KeyStore
    from semsearch.api.metrics import Metrics
    from semsearch.runtime.engine import Engine


@dataclass
class AppState:
    settings: Settings
    keys: KeyStore
    metrics: Metrics | None = None  # made right after, as it reads this state at scrapes
    engine: Engine | None = None  # opened by the lifespan, never at import or per request
    ready: bool = False  # the model has embedded a first text


def state_of(where: Request | FastAPI) -> AppState:
    app = where.app if isinstance(where, Request) else where
    state: AppState = app.state.semsearch
    return state
