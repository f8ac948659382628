"""One typed settings object. Every field is also an environment variable ``SEMSEARCH_<NAME>``
(e.g. ``SEMSEARCH_HOME``), read when ``Settings()`` is built, never at import time."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEMSEARCH_", frozen=True, extra="ignore")

    home: Path = Field(default=Path("./.semsearch"),
                       description="data directory: canonical store, indexes, cache, models")
    embedder: str = Field(default="local", description="embedding provider")
    embedder_precision: str = Field(default="int8", description="local model: int8 or fp32")
    embedder_threads: int = Field(default=0, ge=0, description="onnxruntime threads; 0 = cores")
    embed_batch_size: int = Field(default=8, ge=1, le=1024,
                                  description="texts per model call; 4-8 measured fastest")
    cache_url: str = Field(default="", description="'' = sqlite in home, sqlite:///path, none")
    chunk_max_tokens: int = Field(default=256, ge=16, le=512)
    chunk_overlap_tokens: int = Field(default=32, ge=0)
    chunk_strategy: str = Field(default="sentence")
    ann_threshold: int = Field(default=20000, ge=0,
                               description="chunks above which dense search uses HNSW")
    hnsw_ef_search: int = Field(default=256, ge=1)
    rrf_k: int = Field(default=60, ge=1)
    candidates: int = Field(default=100, ge=1, description="per-component candidates in hybrid")
    max_text_chars: int = Field(default=1_000_000, ge=1,
                                description="longest document accepted, in characters")

    @field_validator("home")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def store_path(self) -> Path:
        return self.home / "semsearch.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def index_dir(self, collection: str) -> Path:
        return self.home / "indexes" / collection
