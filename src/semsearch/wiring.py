"""Settings -> concrete backends. The only module that imports adapters, chosen through
registries so an unknown name fails with the list of known ones."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import metadata, util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semsearch.config import Settings
from semsearch.core.context import TokenEstimate
from semsearch.core.events import Subscription
from semsearch.core.sources import SourceSpec
from semsearch.core.types import EmbedderIdentity
from semsearch.errors import BackendError, InputError
from semsearch.ports import (
    ArtifactStore,
    ChatModel,
    CollectionLocks,
    Embedder,
    EmbeddingCache,
    EventSource,
    IndexStorage,
    KeyStorage,
    NoTelemetry,
    Reranker,
    Store,
    SyncSource,
    Telemetry,
)
from semsearch.runtime.blas import limit_blas_threads
from semsearch.runtime.embedding import CachedEmbedder
from semsearch.runtime.engine import Engine

if TYPE_CHECKING:
    from semsearch.adapters.index_storage import LocalIndexStorage
    from semsearch.adapters.milvus.client import Milvus
    from semsearch.adapters.postgres.index_storage import PgIndexStorage
    from semsearch.core.adapter import FineTuner


def _local_embedder(settings: Settings) -> Embedder:
    from semsearch.adapters.embedders.onnx_local import LOCAL_MODELS, LocalOnnxEmbedder

    if settings.embedder_model and settings.embedder_model not in LOCAL_MODELS:
        raise InputError(f"unknown local model {settings.embedder_model!r}; the local "
                         f"embedder ships {', '.join(sorted(LOCAL_MODELS))}")

    # The embedder truncates at the smaller of the model's window and the chunk size.
    return LocalOnnxEmbedder(settings.models_dir, precision=settings.embedder_precision,
                             threads=settings.embedder_threads,
                             batch_size=settings.embed_batch_size,
                             max_tokens=settings.chunk_max_tokens,
                             model=settings.embedder_model,
                             workers=settings.embedder_workers)


def _openai_embedder(settings: Settings) -> Embedder:
    if not settings.embedder_base_url or not settings.embedder_model:
        raise InputError("the openai-compatible embedder needs SEMSEARCH_EMBEDDER_BASE_URL "
                         "(e.g. https://api.openai.com/v1) and SEMSEARCH_EMBEDDER_MODEL")
    from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
    from semsearch.adapters.embedders.openai_compat import OpenAICompatibleEmbedder

    # Chunk sizes and token estimates use the local WordPiece tokenizer: API tokenizers are
    # not available offline, and chunking only needs a consistent measure of length.
    tokenizer = LocalOnnxEmbedder(settings.models_dir).tokenizer
    optional: dict[str, Any] = {}
    if settings.embedder_max_input_tokens:
        optional["max_input_tokens"] = settings.embedder_max_input_tokens
    return OpenAICompatibleEmbedder(
        base_url=settings.embedder_base_url, model=settings.embedder_model,
        api_key=settings.api_key(), api_key_header=settings.embedder_api_key_header,
        tokenizer=tokenizer, dimensions=settings.embedder_dimensions,
        revision=settings.embedder_revision or None, truncate=settings.embedder_truncate,
        concurrency=settings.embedder_concurrency, timeout=settings.embedder_timeout,
        max_retries=settings.embedder_max_retries, **optional)


def _cohere_embedder(settings: Settings) -> Embedder:
    if not settings.embedder_model:
        raise InputError("the cohere embedder needs SEMSEARCH_EMBEDDER_MODEL (e.g. "
                         "embed-english-v3.0, embed-multilingual-v3.0, embed-v4.0)")
    from semsearch.adapters.embedders.cohere import DEFAULT_BASE_URL, CohereEmbedder
    from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder

    # Cohere's tokenizer is not available offline; chunking only needs a consistent measure.
    tokenizer = LocalOnnxEmbedder(settings.models_dir).tokenizer
    return CohereEmbedder(
        base_url=settings.embedder_base_url or DEFAULT_BASE_URL,
        model=settings.embedder_model, api_key=settings.api_key(),
        api_key_header=settings.embedder_api_key_header, tokenizer=tokenizer,
        dimensions=settings.embedder_dimensions, revision=settings.embedder_revision or None,
        max_input_tokens=settings.embedder_max_input_tokens or None,
        truncate=settings.embedder_truncate, concurrency=settings.embedder_concurrency,
        timeout=settings.embedder_timeout, max_retries=settings.embedder_max_retries)


def _st_embedder(settings: Settings) -> Embedder:
    from semsearch.adapters.embedders.sentence_transformers import (
        SentenceTransformersEmbedder,
    )

    if not settings.embedder_model:
        raise InputError("the sentence-transformers embedder needs SEMSEARCH_EMBEDDER_MODEL "
                         "(a local model folder)")
    return SentenceTransformersEmbedder(
        Path(settings.embedder_model), revision=settings.embedder_revision or None,
        batch_size=settings.embed_batch_size, threads=settings.embedder_threads)


def _bedrock_embedder(settings: Settings) -> Embedder:
    if not settings.embedder_model:
        raise InputError("the bedrock embedder needs SEMSEARCH_EMBEDDER_MODEL, e.g. "
                         "amazon.titan-embed-text-v2:0 or cohere.embed-english-v3")
    from semsearch.adapters.embedders.bedrock import BedrockEmbedder
    from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder

    # As for the OpenAI-compatible provider: Bedrock's tokenizers are not available
    # offline, and chunking only needs a consistent measure of length.
    return BedrockEmbedder(
        model=settings.embedder_model, tokenizer=LocalOnnxEmbedder(settings.models_dir).tokenizer,
        region=settings.embedder_region or None, endpoint_url=settings.embedder_base_url or None,
        dimensions=settings.embedder_dimensions, revision=settings.embedder_revision or None,
        max_input_tokens=settings.embedder_max_input_tokens or None,
        truncate=settings.embedder_truncate, concurrency=settings.embedder_concurrency,
        timeout=settings.embedder_timeout, max_retries=settings.embedder_max_retries)


def _fake_embedder(settings: Settings) -> Embedder:
    from semsearch.adapters.embedders.fake import FakeEmbedder

    return FakeEmbedder(dimension=settings.embedder_dimensions or 384,
                        max_tokens=settings.chunk_max_tokens)


EMBEDDERS: dict[str, Callable[[Settings], Embedder]] = {
    "local": _local_embedder,
    "fake": _fake_embedder,
    "openai-compatible": _openai_embedder,
    "cohere": _cohere_embedder,
    "sentence-transformers": _st_embedder,
    "bedrock": _bedrock_embedder,
}


def _sqlite_cache(settings: Settings, location: str) -> EmbeddingCache:
    from semsearch.adapters.caches.sqlite import SqliteEmbeddingCache

    return SqliteEmbeddingCache(Path(location) if location else settings.home / "cache.db")


def _null_cache(settings: Settings, location: str) -> EmbeddingCache:
    from semsearch.adapters.caches.sqlite import NullEmbeddingCache

    return NullEmbeddingCache()


def _redis_cache(settings: Settings, location: str) -> EmbeddingCache:
    from semsearch.adapters.caches.redis_cache import RedisEmbeddingCache

    return RedisEmbeddingCache(f"redis://{location}", namespace=settings.cache_namespace,
                               ttl_seconds=settings.cache_ttl_seconds or None)


CACHES: dict[str, Callable[[Settings, str], EmbeddingCache]] = {
    "sqlite": _sqlite_cache, "redis": _redis_cache, "none": _null_cache}


def settings_for_model(settings: Settings, model: str) -> Settings:
    """The settings with the embedder switched to ``model``: a local model's name, else an
    API model on the configured OpenAI-compatible endpoint."""
    from semsearch.adapters.embedders.onnx_local import LOCAL_MODELS

    if model in LOCAL_MODELS:
        return settings.model_copy(update={"embedder": "local", "embedder_model": model})
    if settings.embedder == "local":
        raise InputError(f"unknown local model {model!r}; the local embedder ships "
                         f"{', '.join(sorted(LOCAL_MODELS))} (semsearch models)")
    return settings.model_copy(update={"embedder_model": model})


def _local_for_identity(settings: Settings, identity: EmbedderIdentity) -> Embedder | None:
    """A local embedder producing exactly ``identity``, or None if this install has none."""
    from semsearch.adapters.embedders.onnx_local import LOCAL_MODELS

    if identity.model not in LOCAL_MODELS:
        return None
    precision = identity.revision.rsplit("/", 1)[-1]
    try:
        candidate = make_embedder(settings.model_copy(update={
            "embedder": "local", "embedder_model": identity.model,
            "embedder_precision": precision, "chunk_max_tokens": identity.max_tokens}))
    except InputError:
        return None
    return candidate if candidate.identity == identity else None


def make_embedder(settings: Settings) -> Embedder:
    try:
        factory = EMBEDDERS[settings.embedder]
    except KeyError:
        raise InputError(f"unknown embedder {settings.embedder!r}; known: "
                         f"{', '.join(sorted(EMBEDDERS))}") from None
    return factory(settings)


def check_executor(executor: str) -> str:
    """``--executor``: '' for in-process, else ``ray`` or ``ray://host:port`` (normalized);
    anything else, or Ray not installed, is an InputError."""
    spec = executor.strip()
    if spec in ("", "local"):
        return ""
    if spec != "ray" and not spec.startswith("ray://"):
        raise InputError(f"unknown executor {executor!r}; use local (in this process), ray "
                         "(a local Ray started for the run) or ray://host:port (a cluster)")
    from semsearch.adapters.embedders.ray_executor import INSTALL, parse_address

    address = parse_address(spec) if spec != "ray" else "ray"
    if util.find_spec("ray") is None:
        raise InputError(f"--executor {spec} needs Ray, an optional extra: {INSTALL}")
    return address


def with_executor(settings: Settings, embedder: Embedder, executor: str) -> Embedder:
    """The configured embedder, run by ``executor`` (see ``check_executor``). On Ray, each
    actor builds its own copy from these settings, with its share of the CPUs as threads;
    identity and tokenizer stay this one's, so the collection cannot tell the difference."""
    address = check_executor(executor)
    if not address:
        return embedder
    from functools import partial

    from semsearch.adapters.embedders.ray_executor import RayExecutorEmbedder, RayOptions

    threads = settings.embedder_threads or max(1, round(settings.ray_actor_cpus))
    actor_settings = settings.model_copy(update={"embedder_threads": threads})
    per_call = settings.embed_batch_size  # groups align with the model's own batches
    group = -(-settings.ray_batch_size // per_call) * per_call
    options = RayOptions(address="" if address == "ray" else address,
                         actors=settings.ray_actors, group_size=group, batch_size=per_call,
                         actor_cpus=settings.ray_actor_cpus,
                         max_retries=settings.ray_max_retries,
                         failpoints=settings.failpoints, marker_dir=str(settings.home))
    return RayExecutorEmbedder(embedder, partial(make_embedder, actor_settings), options)


def close_executor(engine: Engine) -> None:
    """Stop what ``with_executor`` started (a local Ray) at the end of a run."""
    if "semsearch.adapters.embedders.ray_executor" not in sys.modules:
        return  # never on Ray: nothing to stop, and nothing of it to import
    from semsearch.adapters.embedders.ray_executor import RayExecutorEmbedder

    if isinstance(engine.embedder.embedder, RayExecutorEmbedder):
        engine.embedder.embedder.close()


def make_cache(settings: Settings) -> EmbeddingCache:
    url = settings.cache_url.strip()
    scheme, _, rest = (url or "sqlite://").partition("://")
    if url == "none":
        scheme, rest = "none", ""
    try:
        factory = CACHES[scheme]
    except KeyError:
        raise InputError(f"unknown cache URL {url!r}; use sqlite:///path, "
                         "redis://host:port/db or none") from None
    if scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db
        rest = rest[1:] if rest.startswith("/") else rest
    cache = factory(settings, rest)
    if scheme != "none" and settings.cache_write_delay_ms > 0:
        from semsearch.adapters.caches.write_behind import WriteBehindCache

        cache = WriteBehindCache(cache, delay=settings.cache_write_delay_ms / 1000)
    if scheme != "none" and settings.cache_lru_size > 0:
        from semsearch.adapters.caches.lru import LruEmbeddingCache

        cache = LruEmbeddingCache(cache, max_items=settings.cache_lru_size)
    return cache


class SettingsEmbedders:
    """``EmbedderFactory`` from the settings: other local models, or the configured API's
    other models."""

    def __init__(self, settings: Settings, artifacts: ArtifactStore | None = None) -> None:
        self._settings = settings
        self._artifacts = artifacts  # where fine-tuned weights are (semsearch adapt)

    def for_identity(self, identity: EmbedderIdentity) -> Embedder | None:
        from semsearch.core.adapter import split_finetuned

        if split_finetuned(identity) is not None:
            return _finetuned_for_identity(self._settings, identity, self._artifacts)
        return _local_for_identity(self._settings, identity)

    def for_model(self, model: str) -> Embedder:
        return make_embedder(settings_for_model(self._settings, model))


def _finetuned_for_identity(settings: Settings, identity: EmbedderIdentity,
                            artifacts: ArtifactStore | None) -> Embedder | None:
    """The local embedder of a fine-tuned identity (``semsearch adapt --method finetune``),
    its weights materialized from the store into the model cache now (so a missing or
    corrupt artifact fails here, naming the way out); None if its base model is not local."""
    from semsearch.adapters.embedders.finetuned_onnx import FinetunedOnnxEmbedder
    from semsearch.core.adapter import finetune_artifact_key, split_finetuned

    split = split_finetuned(identity)
    if split is None or artifacts is None:
        return None
    base, fp = split
    if _local_for_identity(settings, base) is None:
        return None
    key = finetune_artifact_key(fp)
    embedder = FinetunedOnnxEmbedder(
        settings.models_dir, fp, lambda: artifacts.get_artifact(key),
        precision=base.revision.rsplit("/", 1)[-1], threads=settings.embedder_threads,
        batch_size=settings.embed_batch_size, max_tokens=identity.max_tokens)
    if embedder.identity != identity:
        return None
    embedder.weights_path()
    return embedder


def make_finetuner() -> FineTuner:
    """The fine-tuner of ``semsearch adapt --method finetune`` (torch; the
    ``sentence-transformers`` extra): imported only when asked for."""
    from semsearch.adapters.embedders.finetune_torch import SentenceTransformersFineTuner

    return SentenceTransformersFineTuner()


def make_store(settings: Settings, db: Any = None) -> Store:
    """SQLite in the home by default; PostgreSQL when SEMSEARCH_STORE is a postgresql:// URL
    (the schema is created or upgraded on first use)."""
    if not _postgres_store_url(settings):
        from semsearch.adapters.stores.sqlite_store import SqliteDocumentStore

        return SqliteDocumentStore(settings.store_path)
    from semsearch.adapters.postgres.store import PostgresStore

    # ``db``: the engine's one pool, shared with the index storage and the locks; the
    # store closes it when it closes.
    db = db if db is not None else make_database(settings)
    try:
        return PostgresStore(db, owns_db=True)
    except BaseException:
        db.close()
        raise


def _postgres_store_url(settings: Settings) -> str:
    """The PostgreSQL URL of SEMSEARCH_STORE, '' when unset; anything else is refused, and
    a missing driver is named with the command that installs it."""
    url = settings.store_url.strip()
    if not url:
        return ""
    from semsearch.adapters.postgres.db import mask

    if not url.startswith(("postgresql://", "postgres://")):
        raise InputError(f"SEMSEARCH_STORE={mask(url)!r}: use a postgresql://user@host:5432/db "
                         "URL, or leave it empty for the embedded store in SEMSEARCH_HOME")
    missing = [m for m in ("psycopg_pool", "pgvector") if util.find_spec(m) is None]
    if missing:
        raise BackendError(f"SEMSEARCH_STORE is PostgreSQL but {', '.join(missing)} is not "
                           'installed: pip install -e ".[postgres]" (or pip install '
                           '"semsearch[postgres]")')
    return url


def migrate_store(settings: Settings, dry_run: bool = False) -> list[str] | None:
    """Create or upgrade the PostgreSQL schema and return its SQL (with ``dry_run``, only
    return what would run); None for the embedded store, which upgrades itself."""
    if not _postgres_store_url(settings):
        return None
    from semsearch.adapters.postgres.schema import migrate

    db = make_database(settings, pool_size=1)
    try:
        return migrate(db, dry_run=dry_run)
    finally:
        db.close()


def make_database(settings: Settings, *, pool_size: int | None = None) -> Any:
    """One connection pool to the shared database, with the settings' limits."""
    from semsearch.adapters.postgres.db import Database

    return Database(_postgres_store_url(settings),
                    pool_size=pool_size or settings.store_pool_size,
                    statement_timeout_ms=settings.store_statement_timeout_ms)


def file_key_storage(path: Path) -> KeyStorage:
    from semsearch.adapters.api_keys import FileKeyStorage

    return FileKeyStorage(path)


def make_key_storage(settings: Settings) -> KeyStorage:
    """API keys in the shared database when SEMSEARCH_STORE is set (every server on it sees
    a key created anywhere), else in the home's keys file."""
    if not _postgres_store_url(settings):
        return file_key_storage(settings.keys_path)
    from semsearch.adapters.postgres.keys import PgKeyStorage

    # A small pool of its own: the API builds its key store before the engine opens.
    return PgKeyStorage(make_database(settings, pool_size=2), owns_db=True)


def make_llm(settings: Settings, count_tokens: Callable[[str], int]) -> ChatModel | None:
    """The LLM `ask` generates with, or None (extractive answers). Nothing is contacted
    here: the first question is the first request."""
    kind = settings.llm.strip().lower()
    if kind in ("", "none", "extractive"):
        return None
    if kind not in ("openai-compatible", "openai"):
        raise InputError(f"unknown SEMSEARCH_LLM {settings.llm!r}; use openai-compatible, "
                         "or leave it empty for extractive answers")
    from semsearch.adapters.llm.openai_chat import OpenAICompatibleChat

    if not settings.llm_base_url:
        raise InputError("SEMSEARCH_LLM=openai-compatible needs SEMSEARCH_LLM_BASE_URL "
                         "(e.g. http://127.0.0.1:8080/v1)")
    return OpenAICompatibleChat(
        base_url=settings.llm_base_url, model=settings.llm_model, api_key=settings.llm_key(),
        context_window=settings.llm_context_tokens, count_tokens=count_tokens,
        timeout=settings.llm_timeout, max_retries=settings.llm_max_retries,
        temperature=settings.llm_temperature, api_key_header=settings.llm_api_key_header)


def _http_reranker(settings: Settings, cache: EmbeddingCache | None) -> Reranker:
    from semsearch.adapters.rerankers.http import HttpReranker

    if not settings.reranker_url:
        raise InputError("SEMSEARCH_RERANKER=http needs SEMSEARCH_RERANKER_URL (e.g. "
                         "http://127.0.0.1:8080 for TEI) and SEMSEARCH_RERANKER_FORMAT "
                         "(tei, infinity, cohere or jina)")
    return HttpReranker(base_url=settings.reranker_url, wire_format=settings.reranker_format,
                        model=settings.reranker_model, api_key=settings.reranker_key(),
                        timeout=settings.reranker_timeout,
                        max_retries=settings.reranker_max_retries)


def _local_reranker(settings: Settings, cache: EmbeddingCache | None) -> Reranker:
    """all-mpnet-base-v2 re-scoring, behind the engine's embedding cache when given (a
    passage's vector is computed once, whichever query brings it back)."""
    from semsearch.adapters.rerankers.local import BiEncoderReranker
    from semsearch.adapters.rerankers.mpnet import MpnetEmbedder, part_files

    part_files()  # the parts missing: an InputError naming the pip command, now
    model = MpnetEmbedder(settings.models_dir, threads=settings.embedder_threads,
                          batch_size=settings.embed_batch_size)
    scorer: Any = model if cache is None else CachedEmbedder(model, cache)
    return BiEncoderReranker(scorer, on_close=model.close)


RERANKERS: dict[str, Callable[[Settings, EmbeddingCache | None], Reranker]] = {
    "http": _http_reranker, "local": _local_reranker}


def make_reranker(settings: Settings, cache: EmbeddingCache | None = None) -> Reranker | None:
    """The configured re-ranker, or None when SEMSEARCH_RERANKER is unset. Nothing is
    contacted or loaded here: the first re-ranked search is the first request."""
    kind = settings.reranker.strip().lower()
    if kind in ("", "none"):
        return None
    try:
        factory = RERANKERS[kind]
    except KeyError:
        raise InputError(f"unknown SEMSEARCH_RERANKER {settings.reranker!r}; known: "
                         f"{', '.join(sorted(RERANKERS))} (or empty for none)") from None
    return factory(settings, cache)


def reranker_factory(settings: Settings, cache: EmbeddingCache | None
                     ) -> Callable[[], Reranker | None] | None:
    """What the engine builds its re-ranker with on first use; None when none is
    configured. An unknown name fails now, before anything opens."""
    kind = settings.reranker.strip().lower()
    if kind in ("", "none"):
        return None
    if kind not in RERANKERS:
        make_reranker(settings)  # raises the error that lists the known names
    return lambda: make_reranker(settings, cache)


def make_telemetry(settings: Settings) -> Telemetry:
    """OTLP export when SEMSEARCH_OTLP_ENDPOINT is set (the otel extra); otherwise nothing,
    and no OpenTelemetry module is imported."""
    if not settings.otlp_endpoint.strip():
        return NoTelemetry()
    from semsearch.adapters.telemetry.otel import OtelTelemetry

    return OtelTelemetry(settings.otlp_endpoint)


def open_engine(settings: Settings | None = None, executor: str = "local") -> Engine:
    """The engine for ``settings``: the embedded backend (files in the home), or with
    SEMSEARCH_STORE every piece of state in the shared PostgreSQL database over one pool
    (store, derived indexes, locks). Either way only the model (its cache directory) and
    the embedding cache (SEMSEARCH_CACHE_URL) stay outside. ``executor`` runs the
    configured embedder elsewhere (``--executor ray``); close it with ``close_executor``."""
    from semsearch.adapters.sources.corpora import FileCorpora

    settings = settings or Settings()
    check_executor(executor)  # a bad value fails before anything opens
    limit_blas_threads(settings.blas_threads)
    settings.home.mkdir(parents=True, exist_ok=True)
    telemetry = make_telemetry(settings)  # a bad endpoint fails before anything opens
    store: Store | None = None
    try:
        store, index_storage, locks = _state_backends(settings)
        embedder = CachedEmbedder(with_executor(settings, make_embedder(settings), executor),
                                  make_cache(settings),
                                  price_per_mtok=settings.embedder_price_per_mtok)
        llm = make_llm(settings, lambda text: TokenEstimate(embedder.tokenizer)(text))
        rerankers = reranker_factory(settings, embedder.cache)
    except BaseException:
        if store is not None:
            store.close()
        telemetry.shutdown()
        raise
    return Engine(settings=settings, store=store, embedder=embedder,
                  index_storage=index_storage, locks=locks,
                  embedders=SettingsEmbedders(settings, store), corpora=FileCorpora(),
                  telemetry=telemetry, llm=llm,
                  reranker_factory=rerankers)


def _state_backends(settings: Settings) -> tuple[Store, IndexStorage, CollectionLocks]:
    milvus = _milvus(settings)  # a bad URL fails before any store opens
    if _postgres_store_url(settings):
        from semsearch.adapters.postgres.index_storage import PgIndexStorage
        from semsearch.adapters.postgres.locks import PgLocks

        db = make_database(settings)
        store = make_store(settings, db)  # closes the pool when the engine closes it
        pg = PgIndexStorage(db, vector_type=settings.store_vector_type,
                            ef_search=settings.hnsw_ef_search)
        return store, _with_vectors(milvus, pg, settings), PgLocks(db)
    from semsearch.adapters.index_storage import LocalIndexStorage
    from semsearch.adapters.locks import FileLocks

    local = LocalIndexStorage(settings.home / "indexes", ann_threshold=settings.ann_threshold,
                              ef_search=settings.hnsw_ef_search)
    return (make_store(settings), _with_vectors(milvus, local, settings),
            FileLocks(settings.home / "locks"))


def _milvus(settings: Settings) -> Milvus | None:
    """SEMSEARCH_VECTOR_INDEX=milvus://... (the milvus extra): the connection, opened on
    first use so an engine starts while Milvus is down and says so when it is needed."""
    url = settings.vector_index.strip()
    if not url:
        return None
    from semsearch.adapters.milvus.client import Milvus, pymilvus

    milvus = Milvus(url, token=settings.milvus_secret(), timeout=settings.milvus_timeout,
                    prefix=settings.milvus_prefix)  # a URL that is not Milvus's fails here
    try:
        pymilvus()
    except ImportError:
        raise InputError("SEMSEARCH_VECTOR_INDEX names Milvus but pymilvus is not installed: "
                         "pip install 'semsearch[milvus]'") from None
    return milvus


def _with_vectors(milvus: Milvus | None, storage: LocalIndexStorage | PgIndexStorage,
                  settings: Settings) -> IndexStorage:
    """The store's own index storage, or Milvus for the vectors beside its keyword half."""
    if milvus is None:
        return storage
    from semsearch.adapters.milvus.index_storage import MilvusIndexStorage

    return MilvusIndexStorage(milvus, storage, ef_search=settings.hnsw_ef_search)


def open_source(engine: Engine, spec: SourceSpec) -> SyncSource:
    """The sync source for ``spec``, with the engine's limits."""
    return make_source(spec, engine.settings)


def make_source(spec: SourceSpec, settings: Settings) -> SyncSource:
    """A ``SourceSpec`` -> SyncSource: a database URL or a path."""
    if spec.is_sql:
        from semsearch.adapters.sources.sql import SqlSource

        return SqlSource(spec, max_text_chars=settings.max_text_chars)
    from semsearch.adapters.sources.file_sync import FileSource

    return FileSource(Path(spec.source))


# -- what `semsearch models` lists: the registry's embedders and whether each is usable here
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
    def api(provider: str, default_id: str, module: str, how: str,
            dimension: int | None) -> dict[str, Any]:
        return {"id": settings.embedder_model or default_id, "provider": provider,
                "dimension": dimension, "installed": util.find_spec(module) is not None,
                "configured": settings.embedder == provider, "how": how}

    dims = settings.embedder_dimensions
    rows += [
        api("openai-compatible", "<SEMSEARCH_EMBEDDER_MODEL>", "httpx",
            "SEMSEARCH_EMBEDDER=openai-compatible SEMSEARCH_EMBEDDER_BASE_URL=... "
            "SEMSEARCH_EMBEDDER_MODEL=...", dims),
        api("cohere", "<SEMSEARCH_EMBEDDER_MODEL>", "httpx",
            "SEMSEARCH_EMBEDDER=cohere SEMSEARCH_EMBEDDER_MODEL=embed-english-v3.0 "
            "SEMSEARCH_EMBEDDER_API_KEY_FILE=...", dims),
        api("sentence-transformers", "<local model folder>", "sentence_transformers",
            'pip install -e ".[sentence-transformers]"; SEMSEARCH_EMBEDDER='
            "sentence-transformers SEMSEARCH_EMBEDDER_MODEL=/path/to/model", None),
        api("bedrock", "amazon.titan-embed-text-v2:0", "boto3",
            'pip install -e ".[bedrock]"; SEMSEARCH_EMBEDDER=bedrock '
            "SEMSEARCH_EMBEDDER_MODEL=amazon.titan-embed-text-v2:0 "
            "SEMSEARCH_EMBEDDER_REGION=us-east-1", dims),
    ]
    return rows


def _rabbitmq_source(sub: Subscription) -> EventSource:
    from semsearch.adapters.brokers.rabbitmq import RabbitMqSource

    return RabbitMqSource(sub)


def _nats_source(sub: Subscription) -> EventSource:
    from semsearch.adapters.brokers.nats import NatsSource

    return NatsSource(sub)


def _redis_source(sub: Subscription) -> EventSource:
    from semsearch.adapters.brokers.redis_streams import RedisStreamSource

    return RedisStreamSource(sub)


# URL scheme -> the broker adapter; each imports its client library only when chosen.
BROKERS: dict[str, Callable[[Subscription], EventSource]] = {
    "amqp": _rabbitmq_source, "amqps": _rabbitmq_source,
    "nats": _nats_source, "tls": _nats_source,
    "redis": _redis_source, "rediss": _redis_source,
}


def open_event_source(sub: Subscription) -> EventSource:
    """Connect to the broker ``sub.url`` names. A URL of no known scheme, or a missing
    client library, is an InputError naming what to do."""
    scheme = sub.url.split("://", 1)[0].lower() if "://" in sub.url else ""
    factory = BROKERS.get(scheme)
    if factory is None:
        raise InputError(f"--from must be a broker URL: amqp://, nats:// or redis:// "
                         f"(got {sub.url.split('@')[-1][:80]!r})")
    needs = "queue" if scheme.startswith("amqp") else "stream"
    if not getattr(sub, needs):
        raise InputError(f"{scheme}:// needs --{needs}")
    return factory(sub)
