"""One typed settings object. Every field is also an environment variable ``SEMSEARCH_<NAME>``
(e.g. ``SEMSEARCH_HOME``), read when ``Settings()`` is built, never at import time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    """Precedence: constructor arguments, then ``SEMSEARCH_*`` environment variables, then
    the TOML settings file named by ``SEMSEARCH_CONFIG`` (default ``./semsearch.toml``, keys
    are the field names), then defaults."""

    # populate_by_name: store_url's environment name is SEMSEARCH_STORE (an alias), and
    # Settings(store_url=...) and the TOML key store_url still work.
    model_config = SettingsConfigDict(env_prefix="SEMSEARCH_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("SEMSEARCH_CONFIG", "semsearch.toml"))
        return (init_settings, env_settings,
                TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    home: Path = Field(default=Path("./.semsearch"),
                       description="data directory: canonical store, indexes, cache")
    model_cache_dir: Path | None = Field(
        default=None, description="built local models, shared by every home; default "
        "$XDG_CACHE_HOME/semsearch/models, else ~/.cache/semsearch/models")
    embedder: str = Field(default="local", description="embedding provider: local, "
                          "openai-compatible, sentence-transformers")
    embedder_model: str = Field(default="", description="model name (API) or path (ST)")
    embedder_base_url: str = Field(default="", description="OpenAI-compatible API base URL; "
                                   "bedrock: an endpoint URL instead of the region's")
    embedder_region: str = Field(default="", description="bedrock: AWS region; default "
                                 "AWS_REGION, else AWS_DEFAULT_REGION or the profile's")
    embedder_api_key: SecretStr | None = Field(default=None)
    embedder_api_key_file: Path | None = Field(default=None,
                                               description="file holding the API key")
    embedder_api_key_header: str = Field(default="Authorization",
                                         description="'Authorization' (Bearer) or e.g. api-key")
    embedder_dimensions: int | None = Field(default=None, ge=1,
                                            description="ask the API for this many dimensions")
    embedder_revision: str = Field(default="", description="override the model revision")
    embedder_max_input_tokens: int = Field(default=0, ge=0, description="0 = provider default")
    embedder_truncate: bool = Field(default=False,
                                    description="cut over-long inputs instead of failing")
    embedder_concurrency: int = Field(default=4, ge=1, le=64)
    embedder_timeout: float = Field(default=30.0, gt=0)
    embedder_max_retries: int = Field(default=5, ge=0)
    embedder_price_per_mtok: float = Field(default=0.0, ge=0,
                                           description="USD per million tokens, for cost")
    embedder_precision: str = Field(default="int8", description="local model: int8 or fp32")
    embedder_threads: int = Field(default=0, ge=0, description="onnxruntime threads; 0 = cores")
    blas_threads: int = Field(default=1, ge=0, le=1024, description="threads numpy's BLAS "
                              "may use once an engine opens (searches' small products "
                              "lose to a second thread); 0 = numpy's own choice")
    embedder_workers: int = Field(default=1, ge=1, le=64, description="local model: "
                                  "sessions a call of several batches spreads them over, "
                                  "sharing the threads; 1 = one session")
    embed_batch_size: int = Field(default=8, ge=1, le=1024,
                                  description="texts per model call; 4-8 measured fastest")
    ray_actors: int = Field(default=2, ge=1, le=4096, description="--executor ray: "
                            "embedding actors, each loading the model once")
    ray_batch_size: int = Field(default=256, ge=1, le=1_000_000, description="--executor "
                                "ray: texts per actor call (rounded up to a multiple of "
                                "SEMSEARCH_EMBED_BATCH_SIZE)")
    ray_actor_cpus: float = Field(default=1.0, gt=0, description="--executor ray: CPUs each "
                                  "actor reserves; also its onnxruntime threads unless "
                                  "SEMSEARCH_EMBEDDER_THREADS is set")
    ray_max_retries: int = Field(default=3, ge=0, le=100, description="--executor ray: "
                                 "restarts of a crashed actor (and retries of its call) "
                                 "before the run fails")
    cache_url: str = Field(default="", description="'' = sqlite in home, sqlite:///path, "
                           "redis://host:port/db, none")
    cache_ttl_seconds: int = Field(default=0, ge=0, description="Redis TTL; 0 = no expiry")
    cache_namespace: str = Field(default="semsearch", description="Redis key prefix")
    cache_lru_size: int = Field(default=10000, ge=0,
                                description="in-process LRU entries in front of the cache")
    cache_write_delay_ms: float = Field(default=0, ge=0, le=10_000, description="gather "
                                        "cache writes on a background thread for up to this "
                                        "long; 0 = write in the caller")
    chunk_max_tokens: int = Field(default=256, ge=16, le=512)
    chunk_overlap_tokens: int = Field(default=32, ge=0)
    chunk_strategy: str = Field(default="sentence")
    ann_threshold: int = Field(default=20000, ge=0,
                               description="chunks above which dense search uses HNSW")
    hnsw_ef_search: int = Field(default=256, ge=1)
    store_vector_type: Literal["vector", "halfvec"] = Field(
        default="vector", description="PostgreSQL store: pgvector column type; halfvec "
        "(16-bit floats) halves the vectors' memory and disk")
    store_url: str = Field(default="", validation_alias=AliasChoices("SEMSEARCH_STORE",
                                                                      "SEMSEARCH_STORE_URL"),
                           description="SEMSEARCH_STORE: the canonical store; '' = SQLite in "
                           "the home, or postgresql://user@host:5432/db (the postgres extra)")
    store_pool_size: int = Field(default=10, ge=1, le=1000,
                                 description="PostgreSQL store: connections per process")
    store_statement_timeout_ms: int = Field(default=30000, ge=0,
                                            description="PostgreSQL store: statement timeout")
    vector_index: str = Field(default="", description="SEMSEARCH_VECTOR_INDEX: where dense "
                              "vectors live; '' = beside the store (files, or pgvector), or "
                              "milvus://host:19530[/database] (milvus+https:// for TLS, the "
                              "milvus extra)")
    milvus_token: SecretStr | None = Field(default=None, description="Milvus: 'user:password' "
                                           "or a Zilliz Cloud API key")
    milvus_token_file: Path | None = Field(default=None,
                                           description="Milvus: a file holding the token")
    milvus_prefix: str = Field(default="semsearch_", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                               description="Milvus: prefix of the collections and aliases "
                               "semsearch owns")
    milvus_timeout: float = Field(default=10.0, gt=0,
                                  description="Milvus: seconds per call before it fails")
    llm: str = Field(default="", description="answers for `semsearch ask` and /ask: "
                     "'' = extractive (offline, no model), openai-compatible")
    llm_base_url: str = Field(default="", description="LLM: the API's base URL, e.g. "
                              "http://127.0.0.1:8080/v1")
    llm_model: str = Field(default="", description="LLM: the model name the server serves")
    llm_api_key: SecretStr | None = Field(default=None)
    llm_api_key_file: Path | None = Field(default=None, description="LLM: file holding the key")
    llm_api_key_header: str = Field(default="Authorization",
                                    description="'Authorization' (Bearer) or e.g. api-key")
    llm_context_tokens: int = Field(default=8192, ge=256, description="LLM: the model's "
                                    "context window, prompt and answer together")
    llm_max_answer_tokens: int = Field(default=512, ge=16, description="LLM: tokens kept "
                                       "for the answer")
    llm_timeout: float = Field(default=120.0, gt=0, description="LLM: seconds per call "
                               "(between stream events when streaming)")
    llm_max_retries: int = Field(default=3, ge=0)
    llm_temperature: float = Field(default=0.0, ge=0, le=2)
    llm_price_per_mtok_input: float = Field(default=0.0, ge=0, description="LLM: USD per "
                                            "million prompt tokens, for cost")
    llm_price_per_mtok_output: float = Field(default=0.0, ge=0, description="LLM: USD per "
                                             "million completion tokens")
    reranker: str = Field(default="", description="re-ranking after fusion: '' = none, "
                          "http (a /rerank API: SEMSEARCH_RERANKER_URL and _FORMAT), local "
                          "(all-mpnet-base-v2 re-scoring; its five part packages installed)")
    reranker_url: str = Field(default="", description="re-ranker: the server's base URL, "
                              "e.g. http://127.0.0.1:8080 (TEI) or https://api.cohere.com")
    reranker_format: Literal["tei", "infinity", "cohere", "jina"] = Field(
        default="tei", description="re-ranker: the /rerank wire format the server speaks")
    reranker_model: str = Field(default="", description="re-ranker: the model name sent "
                                "(Infinity, Cohere, Jina; TEI serves one model)")
    reranker_api_key: SecretStr | None = Field(default=None)
    reranker_api_key_file: Path | None = Field(default=None, description="re-ranker: file "
                                               "holding the API key (sent as a Bearer token)")
    reranker_timeout: float = Field(default=30.0, gt=0, description="re-ranker: seconds per "
                                    "call")
    reranker_max_retries: int = Field(default=3, ge=0, le=100)
    rerank_top: int = Field(default=0, ge=0, le=1000, description="re-rank the first N hits "
                            "of every search by default; 0 = only when a request asks")
    ask_context_tokens: int = Field(default=2000, ge=64, description="ask: most tokens of "
                                    "sources in a prompt (less if the window is smaller)")
    ask_k: int = Field(default=8, ge=1, le=100, description="ask: chunks retrieved")
    consume_batch_size: int = Field(
        default=256, ge=1, le=10_000, description="consume: most events in one micro-batch "
        "(one model call sequence, one store transaction)")
    consume_max_wait_ms: int = Field(
        default=500, ge=0, le=60_000, description="consume: longest a micro-batch waits for "
        "more events after its first one arrived, in milliseconds")
    rrf_k: int = Field(default=60, ge=1)
    candidates: int = Field(default=100, ge=1, description="per-component candidates in hybrid")
    max_text_chars: int = Field(default=1_000_000, ge=1,
                                description="longest document accepted, in characters")

    api_keys_file: Path | None = Field(default=None, description="hashed API keys (JSON); "
                                       "default <home>/api_keys.json when it exists")
    api_max_texts: int = Field(default=2048, ge=1,
                               description="texts or documents per request (OpenAI's 2,048)")
    api_max_request_tokens: int = Field(default=300_000, ge=1,
                                        description="tokens per request, all texts together, "
                                        "counted with the model's tokenizer (OpenAI's 300,000)")
    api_max_text_chars: int = Field(default=100_000, ge=1,
                                    description="characters per text in /embed and queries")
    api_max_body_bytes: int = Field(default=20_000_000, ge=1024, description="request body")
    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000, description="HTTP service: how "
                                 "long gathered embedding calls wait for more requests "
                                 "(only under concurrent load); 0 = take what is queued")
    batch_max_texts: int = Field(default=64, ge=0, le=100_000, description="HTTP service: "
                                 "texts per gathered embedding call; a larger request goes "
                                 "alone; 0 = batching off")
    batch_workers: int = Field(default=0, ge=0, le=64, description="HTTP service: gathered "
                               "embedding calls in flight at once; 0 = one per core")
    host: str = Field(default="127.0.0.1", description="semsearch serve: bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="semsearch serve: port")
    no_progress: bool = Field(default=False, description="CLI: draw no progress bars")
    otlp_endpoint: str = Field(default="", description="OpenTelemetry: base URL of an OTLP/HTTP "
                               "receiver (http://127.0.0.1:4318); traces and metrics go to "
                               "<url>/v1/traces and /v1/metrics. '' = no export (needs the "
                               "otel extra)")
    metrics_namespace: str = Field(default="semsearch", min_length=1, max_length=1024,
                                   description="CloudWatch namespace of --metrics-format emf")
    failpoints: str = Field(default="", description="tests only: name=N,... kills the "
                            "process the N-th time a write reaches the named point")

    @field_validator("home")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("model_cache_dir", mode="before")
    @classmethod
    def _expand_cache(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # SEMSEARCH_MODEL_CACHE_DIR= (empty) means the default
        return Path(str(value)).expanduser()

    def api_key(self) -> str | None:
        """The key from SEMSEARCH_EMBEDDER_API_KEY, else from the secret file."""
        return _secret(self.embedder_api_key, self.embedder_api_key_file,
                       "SEMSEARCH_EMBEDDER_API_KEY_FILE")

    def llm_key(self) -> str | None:
        """The key from SEMSEARCH_LLM_API_KEY, else from its secret file."""
        return _secret(self.llm_api_key, self.llm_api_key_file, "SEMSEARCH_LLM_API_KEY_FILE")

    def reranker_key(self) -> str | None:
        """The key from SEMSEARCH_RERANKER_API_KEY, else from its secret file."""
        return _secret(self.reranker_api_key, self.reranker_api_key_file,
                       "SEMSEARCH_RERANKER_API_KEY_FILE")

    def milvus_secret(self) -> str:
        """The Milvus token from SEMSEARCH_MILVUS_TOKEN, else from its file, else ''."""
        return _secret(self.milvus_token, self.milvus_token_file,
                       "SEMSEARCH_MILVUS_TOKEN_FILE") or ""

    @property
    def store_path(self) -> Path:
        return self.home / "semsearch.db"

    @property
    def models_dir(self) -> Path:
        """Where built local models are kept: one per user, not per home, so a new home
        (every test, every container with a fresh volume) loads the model instead of
        rebuilding it. XDG_CACHE_HOME counts only when absolute, as the XDG spec says."""
        if self.model_cache_dir is not None:
            return self.model_cache_dir
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
        return base / "semsearch" / "models"

    @property
    def keys_path(self) -> Path:
        return self.api_keys_file or self.home / "api_keys.json"

    def index_dir(self, collection: str) -> Path:
        return self.home / "indexes" / collection


def _secret(value: SecretStr | None, file: Path | None, file_variable: str) -> str | None:
    """A secret given directly, else read from a file (a mounted Kubernetes Secret), else
    None; a file that cannot be read is a clear error naming the variable."""
    if value is not None:
        return value.get_secret_value()
    if file is None:
        return None
    from semsearch.errors import InputError

    try:
        return file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(f"cannot read {file_variable} {file}: {exc.strerror}") from None
