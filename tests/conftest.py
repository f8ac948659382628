"""Shared fixtures. The model is built once per test session into a temporary models folder
(so tests never depend on a developer's home) and shared by every test that embeds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.config import Settings
from semsearch.wiring import Engine, open_engine

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEMSEARCH_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def embedder(models_dir: Path) -> LocalOnnxEmbedder:
    return LocalOnnxEmbedder(models_dir, precision="int8", threads=2)


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    # Every engine in a test shares the session's built model instead of rebuilding it.
    (home / "models").symlink_to(models_dir, target_is_directory=True)
    monkeypatch.setenv("SEMSEARCH_HOME", str(home))
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_THREADS", "2")
    return Settings()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = open_engine(settings)
    try:
        yield eng
    finally:
        eng.close()
