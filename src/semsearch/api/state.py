"""The application's state, typed: one object on ``app.state.semsearch`` instead of loose
attributes, so routes and middleware read fields a type checker knows."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
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
    # the store's last health check: (when, answer), so probes ask it at most once a second
    _store_check: tuple[float, bool] | None = None
    _check_lock: threading.Lock = field(default_factory=threading.Lock)
    _pinging: threading.Thread | None = None

    def store_reachable(self, max_age: float = 1.0, wait: float = 2.0) -> bool:
        """Whether the engine's store and its vector index's server (Milvus) answer (either
        can go away while the process lives on). The answer is reused for ``max_age``
        seconds, and a check that takes longer than ``wait`` (a pool waiting for a
        connection that will not come) counts as a no, so a probe gets its answer quickly
        instead of timing out."""
        engine = self.engine
        if engine is None:
            return False
        with self._check_lock:
            last = self._store_check
            if last is not None and time.monotonic() - last[0] < max_age:
                return last[1]
            if self._pinging is None or not self._pinging.is_alive():
                self._pinging = threading.Thread(target=self._ping, args=(engine,),
                                                 name="semsearch-readyz", daemon=True)
                self._pinging.start()
            pinging = self._pinging
        pinging.join(wait)
        if pinging.is_alive():  # still waiting on the database: not ready
            with self._check_lock:
                self._store_check = (time.monotonic(), False)
            return False
        with self._check_lock:
            return self._store_check[1] if self._store_check is not None else False

    def _ping(self, engine: Engine) -> None:
        try:
            ok = bool(engine.store.ping()) and bool(engine.index_storage.ping())
        except Exception:
            ok = False
        with self._check_lock:
            self._store_check = (time.monotonic(), ok)


def state_of(where: Request | FastAPI) -> AppState:
    app = where.app if isinstance(where, Request) else where
    state: AppState = app.state.semsearch
    return state
