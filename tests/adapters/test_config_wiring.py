"""Settings sources and the registries that turn them into backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from semsearch.config import Settings
from semsearch.errors import InputError
from semsearch.wiring import make_cache, make_embedder


def test_environment_beats_the_settings_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "semsearch.toml"
    toml.write_text('embedder = "openai-compatible"\nembedder_model = "text-embedding-3-small"\n'
                    "rrf_k = 10\n")
    monkeypatch.setenv("SEMSEARCH_CONFIG", str(toml))
    monkeypatch.setenv("SEMSEARCH_RRF_K", "30")
    s = Settings()
    assert (s.embedder, s.embedder_model, s.rrf_k) == ("openai-compatible",
                                                       "text-embedding-3-small", 30)


def test_api_key_from_environment_or_secret_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-from-file\n")
    assert Settings(embedder_api_key_file=secret).api_key() == "sk-from-file"
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_API_KEY", "sk-env")
    s = Settings(embedder_api_key_file=secret)
    assert s.api_key() == "sk-env" and "sk-env" not in repr(s)  # never printed
    with pytest.raises(InputError, match="cannot read SEMSEARCH_EMBEDDER_API_KEY_FILE"):
        Settings(embedder_api_key=None, embedder_api_key_file=tmp_path / "nope").api_key()


@pytest.mark.parametrize("kwargs,message", [
    ({"embedder": "magic"}, "unknown embedder 'magic'; known: bedrock, cohere, fake, local, "
                            "openai-compatible, sentence-transformers"),
    ({"embedder_model": "bert-huge"}, "unknown local model 'bert-huge'"),
    ({"embedder": "openai-compatible"}, "needs SEMSEARCH_EMBEDDER_BASE_URL"),
    ({"embedder": "sentence-transformers"}, "needs SEMSEARCH_EMBEDDER_MODEL"),
])
def test_bad_embedder_settings_fail_clearly(kwargs: dict[str, str], message: str,
                                            tmp_path: Path) -> None:
    with pytest.raises(InputError, match=message):
        make_embedder(Settings(home=tmp_path, **kwargs))  # type: ignore[arg-type]


def test_cache_urls(tmp_path: Path) -> None:
    from semsearch.adapters.caches.lru import LruEmbeddingCache
    from semsearch.adapters.caches.redis_cache import RedisEmbeddingCache
    from semsearch.adapters.caches.sqlite import NullEmbeddingCache, SqliteEmbeddingCache

    default = make_cache(Settings(home=tmp_path))
    assert isinstance(default, LruEmbeddingCache)
    plain = make_cache(Settings(home=tmp_path, cache_lru_size=0,
                                cache_url=f"sqlite:///{tmp_path}/c.db"))
    assert isinstance(plain, SqliteEmbeddingCache) and (tmp_path / "c.db").exists()
    redis = make_cache(Settings(home=tmp_path, cache_lru_size=0,
                                cache_url="redis://127.0.0.1:6379/15"))
    assert isinstance(redis, RedisEmbeddingCache)
    assert isinstance(make_cache(Settings(home=tmp_path, cache_url="none")), NullEmbeddingCache)
    with pytest.raises(InputError, match="unknown cache URL 'memcached://x'"):
        make_cache(Settings(home=tmp_path, cache_url="memcached://x"))
