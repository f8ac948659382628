"""Search time outside the model: the store round trips, index lookups and fusion of one
search, with the query's vector fixed (the model call replaced by a constant), so what the
renovation changed is not hidden under the model's 2-3 ms.

    SEMSEARCH_HOME=<home with scifact indexed> python bench/search_overhead.py
    SEMSEARCH_HOME=<baseline home> PYTHONPATH=<baseline>/src python bench/search_overhead.py

Prints, per mode, the median over 5 passes of 300 searches of the mean ms per search."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from semsearch.config import Settings
from semsearch.core.types import Mode
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine

QUERY = "vitamin d bone fractures"


def main() -> None:
    eng = open_engine(Settings(cache_url="none"))
    try:
        search(eng, "scifact", SearchRequest("warm", k=10))
        inner = eng.embedder.embedder
        vec = inner.embed([QUERY])

        class Fixed:
            """The configured embedder's identity and tokenizer, with a constant vector."""

            def __init__(self, e: Any) -> None:
                self.e, self.meter = e, e.meter

            identity = property(lambda self: self.e.identity)
            tokenizer = property(lambda self: self.e.tokenizer)

            def embed(self, texts: list[str], input_type: Any = None) -> Any:
                return np.repeat(vec, len(texts), axis=0)

        eng.embedder.embedder = Fixed(inner)

        def run(mode: Mode, n: int = 300) -> float:
            t = time.perf_counter()
            for _ in range(n):
                search(eng, "scifact", SearchRequest(QUERY, mode=mode, k=10))
            return (time.perf_counter() - t) / n * 1000

        for mode in (Mode.KEYWORD, Mode.DENSE, Mode.HYBRID):
            ts = sorted(run(mode) for _ in range(5))
            print(f"{mode.value}: {ts[2]:.3f} ms per search (model excluded)")
    finally:
        eng.close()


if __name__ == "__main__":
    main()
