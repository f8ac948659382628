"""Off-the-shelf OpenAI clients against ``/v1`` on a real loopback server: the official
``openai`` package and LangChain's ``OpenAIEmbeddings`` work unchanged, errors land in the
client's own exception classes, and nothing they do reaches past loopback (no tokenizer
download, no tracing, no default base URL)."""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.api.conftest import LiveServer

openai = pytest.importorskip("openai")

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SHORT = "all-MiniLM-L6-v2"
TEXTS = ["the cat sat on the mat", "sourdough starter feeding schedule", "hello"]
ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
       "OPENAI_WEBHOOK_SECRET", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING", "LANGSMITH_TRACING",
       "LANGCHAIN_API_KEY", "LANGSMITH_API_KEY", "LANGCHAIN_ENDPOINT", "LANGSMITH_ENDPOINT")


def _loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse (and record) every connection or name lookup that is not loopback, and make
    sure the environment cannot redirect a client somewhere else."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    refused: list[str] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            refused.append(f"connect {address!r}")
            raise OSError(f"test refuses a non-loopback connection to {address!r}")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _loopback(host if isinstance(host, str)
                                              else host.decode()):
            refused.append(f"resolve {host!r}")
            raise OSError(f"test refuses to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield refused
    assert not refused, f"something tried to leave loopback: {refused}"


def _client(live: LiveServer, api_key: str = "dummy") -> Any:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=api_key, max_retries=0,
                         timeout=60)


def _ours(live: LiveServer, texts: list[str]) -> np.ndarray:
    with live.client() as c:
        r = c.post("/embed", json={"texts": texts, "input_type": "passage"})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["vectors"], dtype=np.float32)


def _vectors(response: Any) -> np.ndarray:
    rows = sorted(response.data, key=lambda d: d.index)
    return np.asarray([d.embedding for d in rows], dtype=np.float32)


def test_default_base64_encoding_decodes_to_our_vectors(live: LiveServer) -> None:
    expected = _ours(live, TEXTS)
    with _client(live) as client:
        raw = client.embeddings.with_raw_response.create(model=MODEL, input=TEXTS)
        sent = json.loads(raw.http_request.content)
        assert sent["encoding_format"] == "base64"  # the client's default on the wire
        wire = raw.http_response.json()
        assert all(isinstance(d["embedding"], str) for d in wire["data"])
        first = np.frombuffer(base64.b64decode(wire["data"][0]["embedding"]), dtype="<f4")
        assert first.shape == (384,)
        response = raw.parse()
    got = _vectors(response)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [d.index for d in response.data] == [0, 1, 2]
    assert response.model == MODEL and response.object == "list"
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens


def test_float_encoding_short_id_and_single_string(live: LiveServer) -> None:
    expected = _ours(live, TEXTS)
    with _client(live) as client:
        response = client.embeddings.create(model=SHORT, input=TEXTS, encoding_format="float")
        assert all(isinstance(d.embedding, list) for d in response.data)
        np.testing.assert_allclose(_vectors(response), expected, atol=1e-6)
        assert response.model == SHORT
        one = client.embeddings.create(model=MODEL, input=TEXTS[1])
        assert len(one.data) == 1
        np.testing.assert_allclose(_vectors(one)[0], expected[1], atol=1e-6)


def test_dimensions_equal_to_the_model_is_accepted(live: LiveServer) -> None:
    with _client(live) as client:
        response = client.embeddings.create(model=MODEL, input=TEXTS[:2], dimensions=384)
        assert _vectors(response).shape == (2, 384)
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=MODEL, input=TEXTS[:2], dimensions=128)
        assert info.value.status_code == 400
        assert info.value.code == "dimensions_unsupported"
        assert info.value.param == "dimensions"
        assert info.value.type == "invalid_request_error"


def test_models_list(live: LiveServer) -> None:
    with _client(live) as client:
        ids = [m.id for m in client.models.list()]
    assert set(ids) == {MODEL, SHORT}


def test_models_retrieve_including_an_id_with_a_slash(live: LiveServer) -> None:
    with _client(live) as client:
        for model_id in (MODEL, SHORT):
            model = client.models.retrieve(model_id)
            assert model.id == model_id and model.object == "model"
        for unknown in ("text-embedding-3-small", "sentence-transformers/nope", "a/b/c"):
            with pytest.raises(openai.NotFoundError) as info:
                client.models.retrieve(unknown)
            assert info.value.code == "model_not_found"
            assert info.value.type == "invalid_request_error"
            assert unknown in info.value.message and "GET /v1/models" in info.value.message


def test_unknown_model_is_not_found(live: LiveServer) -> None:
    with _client(live) as client, pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="text-embedding-3-small", input=["hi"])
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    assert "GET /v1/models" in info.value.message


@pytest.mark.parametrize("bad", ["", [""], ["ok", "   "], []],
                         ids=["empty", "list-empty", "blank", "no-inputs"])
def test_empty_input_is_a_bad_request(live: LiveServer, bad: Any) -> None:
    with _client(live) as client, pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=bad)
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error" and info.value.param == "input"


def test_invalid_bodies_are_bad_requests_in_openais_shape(live: LiveServer) -> None:
    """What pydantic refuses is 400 under /v1 (422 on the native endpoints)."""
    with live.client() as c:
        for body, param in (({"model": MODEL}, "input"), ({"input": "x"}, "model"),
                            ({"model": MODEL, "input": 5}, "input"),
                            ({"model": MODEL, "input": "x", "encoding_format": "int8"},
                             "encoding_format"),
                            ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions")):
            r = c.post("/v1/embeddings", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["param"] == param, r.text
            assert r.json()["error"]["type"] == "invalid_request_error"
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = c.post("/embed", json={"texts": 5})
        assert r.status_code == 422 and r.json()["error"]["param"] == "texts"
        assert c.get("/v1/nowhere").json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("ids", [[1820, 8415, 7731], [[1820, 8415], [7731]]],
                         ids=["one", "batch"])
def test_token_arrays_are_refused_plainly(live: LiveServer, ids: Any) -> None:
    """LangChain's default sends tiktoken ids: say what to set instead, not 'not a string'."""
    with _client(live) as client, pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=ids)
    assert info.value.code == "token_arrays_unsupported" and info.value.param == "input"
    message = info.value.message
    assert "token ids" in message and "check_embedding_ctx_length=False" in message
    assert "valid string" not in message


def test_many_inputs_in_one_request_like_langchain_sends(live: LiveServer) -> None:
    """LangChain sends 1,000 inputs per request by default; OpenAI takes up to 2,048."""
    texts = [f"note {i} about kites" for i in range(2048)]
    with _client(live) as client:
        response = client.embeddings.create(model=SHORT, input=texts, encoding_format="float")
        assert len(response.data) == 2048 and [d.index for d in response.data] == list(
            range(2048))
        with pytest.raises(openai.APIStatusError) as info:
            client.embeddings.create(model=SHORT, input=[*texts, "one too many"])
        assert info.value.status_code == 413 and info.value.code == "too_many_texts"
        assert "SEMSEARCH_API_MAX_TEXTS" in info.value.message
    np.testing.assert_allclose(_vectors(response)[[0, 1999]], _ours(live, [texts[0],
                                                                         texts[1999]]),
                               atol=1e-6)


def test_langchain_openai_embeddings(live: LiveServer) -> None:
    lc = pytest.importorskip("langchain_openai")
    emb = lc.OpenAIEmbeddings(model=SHORT, base_url=live.url + "/v1", api_key="x",
                              check_embedding_ctx_length=False, max_retries=0)
    docs = np.asarray(emb.embed_documents(TEXTS), dtype=np.float32)
    query = np.asarray(emb.embed_query("what do I feed a sourdough starter?"), np.float32)
    expected = _ours(live, [*TEXTS, "what do I feed a sourdough starter?"])
    assert docs.shape == (3, 384) and query.shape == (384,)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    for got, want in zip([*docs, query], expected, strict=True):
        assert cos(got, want) > 0.999


def test_langchain_default_batch_of_1000_inputs(live: LiveServer) -> None:
    """Over 1,000 chunks: LangChain's default chunk_size sends 1,000 per request."""
    lc = pytest.importorskip("langchain_openai")
    emb = lc.OpenAIEmbeddings(model=SHORT, base_url=live.url + "/v1", api_key="x",
                              check_embedding_ctx_length=False, max_retries=0)
    assert emb.chunk_size == 1000
    texts = [f"passage {i}: kites fly best in steady wind" for i in range(1100)]
    docs = np.asarray(emb.embed_documents(texts), dtype=np.float32)
    assert docs.shape == (1100, 384)
    np.testing.assert_allclose(docs[[0, 1099]], _ours(live, [texts[0], texts[1099]]),
                               atol=1e-5)


@pytest.mark.embedded_only(
    reason="keys in a file; on PostgreSQL they are rows (tests/e2e/test_postgres_shared.py)")
def test_api_keys_right_key_works_wrong_key_is_refused(
        live_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    from semsearch.api.auth import KeyStore

    path = tmp_path / "keys.json"
    key = KeyStore(path).create("t", {"*": "read"})
    srv = live_factory(api_keys_file=path)
    with _client(srv, api_key=key) as client:
        response = client.embeddings.create(model=MODEL, input=["hello"])
        assert _vectors(response).shape == (1, 384)
        assert {m.id for m in client.models.list()} == {MODEL, SHORT}
    for wrong in ("wrong-key", key + "x"):
        with _client(srv, api_key=wrong) as client, pytest.raises(openai.AuthenticationError):
            client.embeddings.create(model=MODEL, input=["hello"])
    with _client(srv, api_key="wrong-key") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
