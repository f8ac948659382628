"""Collection listing and removal (the canonical rows and every derived index file)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from semsearch.wiring import Engine


def _dir_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe_collections(engine: Engine) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for info in engine.store.list_collections():
        rows.append({
            "name": info.name,
            "documents": info.documents,
            "chunks": info.chunks,
            "identity": info.identity.to_dict(),
            "model": info.identity.model,
            "dimension": info.identity.dimension,
            "metric": info.identity.metric,
            "chunker": dict(info.chunker),
            "generation": info.generation,
            "created_at": info.created_at,
            "bytes_on_disk": _dir_bytes(engine.settings.index_dir(info.name)),
        })
    return rows


def drop_collection(engine: Engine, name: str) -> None:
    engine.store.get_collection(name)  # unknown name -> NotFoundError before touching files
    engine.forget_indexes(name)
    engine.store.drop_collection(name)
    shutil.rmtree(engine.settings.index_dir(name), ignore_errors=True)
