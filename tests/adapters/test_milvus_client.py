"""The Milvus connection's pure parts (no server): URLs, names, settings, and that the
default path never imports pymilvus. The server-side behaviour is in
tests/e2e/test_milvus_backend.py and the contract suite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from semsearch.adapters.milvus.client import Milvus, milvus_name, parse_url
from semsearch.config import Settings
from semsearch.errors import InputError
from semsearch.wiring import open_engine
from tests.default_path import modules_loaded_by_default


@pytest.mark.parametrize(("url", "uri", "db"), [
    ("milvus://127.0.0.1:19530", "http://127.0.0.1:19530", "default"),
    ("milvus://milvus.search.svc", "http://milvus.search.svc:19530", "default"),
    ("milvus://10.0.0.7:19530/products", "http://10.0.0.7:19530", "products"),
    ("milvus+https://in03-abc.api.gcp-us-west1.zillizcloud.com:443",
     "https://in03-abc.api.gcp-us-west1.zillizcloud.com:443", "default"),
    ("milvus+https://cluster.example", "https://cluster.example:443", "default"),
    ("milvus://[::1]:19530", "http://[::1]:19530", "default"),
])
def test_urls(url: str, uri: str, db: str) -> None:
    assert parse_url(url) == (uri, db)


@pytest.mark.parametrize(("url", "says"), [
    ("http://127.0.0.1:19530", "not a Milvus URL"),
    ("milvus://", "not a Milvus URL"),
    ("milvus://127.0.0.1:notaport", "port"),
    ("milvus://127.0.0.1:99999", "port"),
    ("milvus://root:secret@127.0.0.1:19530", "SEMSEARCH_MILVUS_TOKEN"),
    ("milvus://127.0.0.1:19530/9lives", "database name"),
    ("milvus://127.0.0.1:19530/a;drop", "database name"),
])
def test_bad_urls_are_clear_errors(url: str, says: str) -> None:
    with pytest.raises(InputError, match=says):
        parse_url(url)


def test_a_token_in_the_url_is_never_echoed() -> None:
    with pytest.raises(InputError) as err:
        parse_url("milvus://root:s3cret-token@127.0.0.1:19530")
    assert "s3cret-token" not in str(err.value)


def test_names_are_valid_milvus_names_and_distinct() -> None:
    names = ["docs", "docs@v2", "my-docs", "my_docs", "my.docs", "Docs", "a" * 64 + "@v12"]
    made = [milvus_name("semsearch_", n) for n in names]
    assert len(set(made)) == len(made)
    for m in made:
        assert m.replace("_", "").isalnum() and m.isascii() and len(m) <= 255
        assert m.startswith("semsearch_")
    # Aliases keep the name people type when Milvus allows it.
    assert milvus_name("semsearch_", "docs", exact=True) == "semsearch_docs"
    assert milvus_name("semsearch_", "my-docs", exact=True) != \
        milvus_name("semsearch_", "my_docs", exact=True)


def test_timeouts_are_whole_seconds() -> None:
    """pymilvus bounds its retry loop by a timeout only when it is an int."""
    assert Milvus("milvus://127.0.0.1:1", timeout=2.6).timeout == 3
    assert Milvus("milvus://127.0.0.1:1", timeout=0.1).timeout == 1


def test_settings(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("root:Milvus\n")
    s = Settings(home=tmp_path, milvus_token_file=token)
    assert s.milvus_secret() == "root:Milvus"
    assert Settings(home=tmp_path).milvus_secret() == ""
    with pytest.raises(InputError, match="SEMSEARCH_MILVUS_TOKEN_FILE"):
        Settings(home=tmp_path, milvus_token_file=tmp_path / "absent").milvus_secret()
    with pytest.raises(ValueError):
        Settings(home=tmp_path, milvus_prefix="bad-prefix")


def test_an_engine_opens_while_milvus_is_unreachable(tmp_path: Path) -> None:
    """The connection is opened on first use: the engine (and a server's /healthz) comes up,
    and the first use says what is wrong. Port 1 on loopback refuses at once."""
    eng = open_engine(Settings(home=tmp_path, embedder="fake",
                               vector_index="milvus://127.0.0.1:1", milvus_timeout=1))
    try:
        assert eng.index_storage.ping() is False
    finally:
        eng.close()


def test_the_default_imports_nothing_of_milvus(tmp_path: Path) -> None:
    assert modules_loaded_by_default(
        tmp_path, "'milvus' in m or m.split('.')[0] == 'grpc'") == "[]"


def test_milvus_configured_without_pymilvus_says_which_extra(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # makes `import pymilvus` fail
    with pytest.raises(InputError, match=r"pip install 'semsearch\[milvus\]'"):
        open_engine(Settings(home=tmp_path, embedder="fake",
                             vector_index="milvus://127.0.0.1:1"))
    with pytest.raises(InputError, match="not a Milvus URL"):
        open_engine(Settings(home=tmp_path, embedder="fake",
                             vector_index="qdrant://127.0.0.1:6333"))
