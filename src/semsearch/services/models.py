"""The embedders this installation can use, for ``semsearch models``."""

from __future__ import annotations

from importlib import metadata, util
from typing import Any

from semsearch.config import Settings


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def available_models(settings: Settings) -> list[dict[str, Any]]:
    from semsearch.adapters.embedders.onnx_local import MODEL_ID, WEIGHTS_PACKAGE

    local = _installed(WEIGHTS_PACKAGE)
    rows: list[dict[str, Any]] = [
        {"id": MODEL_ID, "provider": "local", "precision": p, "dimension": 384,
         "max_tokens": 256, "installed": local,
         "configured": settings.embedder == "local" and settings.embedder_precision == p,
         "how": f"SEMSEARCH_EMBEDDER=local SEMSEARCH_EMBEDDER_PRECISION={p}"}
        for p in ("int8", "fp32")]
    rows.append({
        "id": settings.embedder_model or "<SEMSEARCH_EMBEDDER_MODEL>",
        "provider": "openai-compatible", "dimension": settings.embedder_dimensions,
        "installed": util.find_spec("httpx") is not None,
        "configured": settings.embedder == "openai-compatible",
        "how": "SEMSEARCH_EMBEDDER=openai-compatible SEMSEARCH_EMBEDDER_BASE_URL=... "
               "SEMSEARCH_EMBEDDER_MODEL=..."})
    rows.append({
        "id": settings.embedder_model or "<local model folder>",
        "provider": "sentence-transformers", "dimension": None,
        "installed": util.find_spec("sentence_transformers") is not None,
        "configured": settings.embedder == "sentence-transformers",
        "how": 'pip install -e ".[sentence-transformers]"; SEMSEARCH_EMBEDDER='
               "sentence-transformers SEMSEARCH_EMBEDDER_MODEL=/path/to/model"})
    return rows
