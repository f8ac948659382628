"""semsearch: embed documents and find them again (dense, BM25 and hybrid search).

The public API is what ``__all__`` lists (a test keeps it from drifting). Names resolve
lazily so ``import semsearch`` and ``semsearch --help`` stay cheap."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Settings": "semsearch.config",
    "Filter": "semsearch.core.filters",
    "parse_filter": "semsearch.core.filters",
    "Chunk": "semsearch.core.types",
    "Document": "semsearch.core.types",
    "EmbedderIdentity": "semsearch.core.types",
    "Hit": "semsearch.core.types",
    "InputType": "semsearch.core.types",
    "Mode": "semsearch.core.types",
    "BackendError": "semsearch.errors",
    "IdentityMismatchError": "semsearch.errors",
    "InputError": "semsearch.errors",
    "NotFoundError": "semsearch.errors",
    "SemsearchError": "semsearch.errors",
    "SourceError": "semsearch.errors",
    "evaluate_collection": "semsearch.services.evaluate",
    "evaluate_collections": "semsearch.services.evaluate",
    "adapt": "semsearch.services.adapt",
    "tune": "semsearch.services.tune",
    "search_defaults": "semsearch.services.tune",
    "IndexReport": "semsearch.services.ingest",
    "delete_documents": "semsearch.services.ingest",
    "index_documents": "semsearch.services.ingest",
    "SearchRequest": "semsearch.services.search",
    "SearchResult": "semsearch.services.search",
    "search": "semsearch.services.search",
    "Engine": "semsearch.runtime.engine",
    "find_duplicates": "semsearch.services.dedupe",
    "similar": "semsearch.services.neighbours",
    "Rated": "semsearch.services.recommend",
    "RecommendRequest": "semsearch.services.recommend",
    "recommend": "semsearch.services.recommend",
    "open_engine": "semsearch.wiring",
}

__all__ = [
    "BackendError",
    "Chunk",
    "Document",
    "EmbedderIdentity",
    "Engine",
    "Filter",
    "Hit",
    "IdentityMismatchError",
    "IndexReport",
    "InputError",
    "InputType",
    "Mode",
    "NotFoundError",
    "Rated",
    "RecommendRequest",
    "SearchRequest",
    "SearchResult",
    "SemsearchError",
    "Settings",
    "SourceError",
    "adapt",
    "delete_documents",
    "evaluate_collection",
    "evaluate_collections",
    "find_duplicates",
    "index_documents",
    "open_engine",
    "parse_filter",
    "recommend",
    "search",
    "search_defaults",
    "similar",
    "tune",
]

if TYPE_CHECKING:
    from semsearch.config import Settings
    from semsearch.core.filters import Filter, parse_filter
    from semsearch.core.types import Chunk, Document, EmbedderIdentity, Hit, InputType, Mode
    from semsearch.errors import (
        BackendError,
        IdentityMismatchError,
        InputError,
        NotFoundError,
        SemsearchError,
        SourceError,
    )
    from semsearch.runtime.engine import Engine
    from semsearch.services.adapt import adapt
    from semsearch.services.dedupe import find_duplicates
    from semsearch.services.evaluate import evaluate_collection, evaluate_collections
    from semsearch.services.ingest import IndexReport, delete_documents, index_documents
    from semsearch.services.neighbours import similar
    from semsearch.services.recommend import Rated, RecommendRequest, recommend
    from semsearch.services.search import SearchRequest, SearchResult, search
    from semsearch.services.tune import search_defaults, tune
    from semsearch.wiring import open_engine


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'semsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
