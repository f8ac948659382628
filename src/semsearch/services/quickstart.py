"""The quickstart: index the sample corpus that ships with semsearch and query it."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from semsearch.core.types import Hit, Mode
from semsearch.runtime.engine import Engine
from semsearch.services.ingest import IndexReport, index_documents
from semsearch.services.search import SearchRequest, search

COLLECTION = "quickstart"
QUERY = "how do I keep my vegetables fresh for longer?"


def sample_dir() -> Path:
    return Path(str(resources.files("semsearch") / "data" / "sample"))


def run_quickstart(engine: Engine, on_progress: Callable[[int], None] | None = None,
                   query: str = QUERY) -> tuple[IndexReport, dict[str, list[Hit]]]:
    report = index_documents(engine, COLLECTION, engine.corpora.documents(sample_dir()),
                             on_progress=on_progress)
    results = {mode.value: search(engine, COLLECTION, SearchRequest(query, mode=mode, k=5)).hits
               for mode in (Mode.HYBRID, Mode.DENSE, Mode.KEYWORD)}
    return report, results
