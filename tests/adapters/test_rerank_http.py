"""The HTTP re-ranker against a real loopback server speaking each ``/rerank`` format (TEI,
Infinity, Cohere, Jina): the request it sends, scores mapped back to the texts by index when
the server answers sorted, the Bearer key, batching under TEI's limit, retries on 429/5xx and
dropped connections, and a clear error (never a traceback) for what a retry cannot fix or a
body that makes no sense."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from semsearch.adapters.rerankers.http import HttpReranker, scores_by_index
from semsearch.config import Settings
from semsearch.errors import BackendError, InputError, NotFoundError
from semsearch.wiring import make_reranker
from tests.fakes.rerank_server import PATHS, FakeRerankServer, overlap

FORMATS = ("tei", "infinity", "cohere", "jina")
QUERY = "aspirin lowers fever in children"
TEXTS = ["The stock market fell.",
         "Aspirin lowers fever.",
         "Aspirin lowers fever in children and adults.",
         "Fever in children is common."]


@pytest.fixture(params=FORMATS)
def server(request: pytest.FixtureRequest) -> Iterator[FakeRerankServer]:
    with FakeRerankServer(request.param, api_key="rk-secret") as srv:
        yield srv


def _client(server: FakeRerankServer, **kw: object) -> HttpReranker:
    sleeps: list[float] = []
    options: dict[str, object] = {"base_url": server.url, "wire_format": server.fmt,
                                  "model": "rerank-test", "api_key": "rk-secret",
                                  "max_retries": 3, "sleep": sleeps.append}
    options.update(kw)
    client = HttpReranker(**options)  # type: ignore[arg-type]
    client.sleeps = sleeps  # type: ignore[attr-defined]
    return client


def test_each_format_scores_every_text_in_input_order(server: FakeRerankServer) -> None:
    client = _client(server)
    scores = client.rerank(QUERY, TEXTS)
    # The server answered sorted by score; the client put each score back on its text.
    assert scores == [overlap(QUERY, t) for t in TEXTS]
    assert scores.index(max(scores)) == 2
    sent = server.requests[-1]
    assert sent.path == PATHS[server.fmt]
    assert sent.headers["authorization"] == "Bearer rk-secret"
    field = "texts" if server.fmt == "tei" else "documents"
    assert sent.body[field] == TEXTS and sent.body["query"] == QUERY
    if server.fmt != "tei":
        assert sent.body["model"] == "rerank-test"
        assert sent.body["top_n"] == len(TEXTS)  # every text scored, none cut
    assert client.identity["format"] == server.fmt
    assert client.rerank(QUERY, []) == []
    client.close()


def test_a_base_url_with_the_api_version_is_not_doubled() -> None:
    with FakeRerankServer("cohere") as srv:
        client = HttpReranker(base_url=srv.url + "/v2/", wire_format="cohere",
                              model="rerank-test")
        assert client.rerank(QUERY, TEXTS[:2]) == [overlap(QUERY, t) for t in TEXTS[:2]]
        assert srv.requests[-1].path == "/v2/rerank"
    with FakeRerankServer("jina") as srv:
        client = HttpReranker(base_url=srv.url + "/v1", wire_format="jina",
                              model="rerank-test")
        client.rerank(QUERY, TEXTS[:1])
        assert srv.requests[-1].path == "/v1/rerank"


def test_tei_batches_stay_under_its_client_batch_limit() -> None:
    texts = [f"text {i} about fever" if i % 7 == 0 else f"text {i}" for i in range(70)]
    with FakeRerankServer("tei") as srv:
        scores = HttpReranker(base_url=srv.url, wire_format="tei").rerank("fever", texts)
        assert [len(r.body["texts"]) for r in srv.requests] == [32, 32, 6]
        assert scores == [overlap("fever", t) for t in texts]
        # Asked for more than the server takes, the 413 is a clear input error.
        big = HttpReranker(base_url=srv.url, wire_format="tei", batch_size=64)
        with pytest.raises(InputError, match=r"413.*maximum allowed batch size"):
            big.rerank("fever", texts)


def test_throttling_and_server_errors_are_retried(server: FakeRerankServer) -> None:
    client = _client(server)
    server.script("429", "500", "503")
    assert client.rerank(QUERY, TEXTS) == [overlap(QUERY, t) for t in TEXTS]
    assert len(server.requests) == 4
    assert client.sleeps[0] == 0.0  # type: ignore[attr-defined]  # Retry-After: 0 honoured
    assert client.meter.snapshot().retries == 3


def test_a_dropped_connection_and_a_garbled_body_are_retried() -> None:
    with FakeRerankServer("infinity") as srv:
        client = _client(srv)
        srv.script("drop", "malformed", "missing")
        assert client.rerank(QUERY, TEXTS) == [overlap(QUERY, t) for t in TEXTS]
        assert len(srv.requests) == 4


@pytest.mark.parametrize("fault,match", [
    ("malformed", "malformed response body"),
    ("missing", "have no score"),
    ("badscore", "not a finite number"),
    ("wrongshape", "malformed response body"),
])
def test_a_body_that_stays_malformed_is_a_clear_error(server: FakeRerankServer, fault: str,
                                                     match: str) -> None:
    client = _client(server, max_retries=1)
    server.script(fault, fault)
    with pytest.raises(BackendError, match=f"failed after 2 attempts.*{match}"):
        client.rerank(QUERY, TEXTS)


def test_retries_give_up_with_the_last_reason(server: FakeRerankServer) -> None:
    client = _client(server, max_retries=2)
    server.script("503", "503", "503")
    with pytest.raises(BackendError, match=r"failed after 3 attempts: HTTP 503: scripted 503"):
        client.rerank(QUERY, TEXTS)
    assert len(server.requests) == 3


def test_what_a_retry_cannot_fix_fails_at_once(server: FakeRerankServer) -> None:
    client = _client(server)
    server.script("400")
    with pytest.raises(InputError, match=r"rejected.*HTTP 400"):
        client.rerank(QUERY, TEXTS)
    server.script("404")
    with pytest.raises(NotFoundError, match="check SEMSEARCH_RERANKER_URL"):
        client.rerank(QUERY, TEXTS)
    assert len(server.requests) == 2  # neither was retried
    wrong_key = _client(server, api_key="wrong")
    with pytest.raises(BackendError, match=r"refused.*401.*SEMSEARCH_RERANKER_API_KEY"):
        wrong_key.rerank(QUERY, TEXTS)
    if server.fmt != "tei":  # a model the server does not serve
        with pytest.raises(NotFoundError, match="model 'nope'"):
            _client(server, model="nope").rerank(QUERY, TEXTS)


def test_nobody_listening_is_retried_then_a_clear_error() -> None:
    with FakeRerankServer("tei") as srv:
        url = srv.url
    client = HttpReranker(base_url=url, wire_format="tei", max_retries=1,
                          sleep=lambda s: None)
    with pytest.raises(BackendError, match="failed after 2 attempts: connection error"):
        client.rerank(QUERY, TEXTS)


def test_bad_configuration_is_refused_before_any_request() -> None:
    with pytest.raises(InputError, match="SEMSEARCH_RERANKER_URL 'localhost:80'"):
        HttpReranker(base_url="localhost:80")
    with pytest.raises(InputError, match="known: cohere, infinity, jina, tei"):
        HttpReranker(base_url="http://127.0.0.1:1", wire_format="voyage")
    with pytest.raises(InputError, match="needs SEMSEARCH_RERANKER_MODEL"):
        HttpReranker(base_url="http://127.0.0.1:1", wire_format="cohere")
    client = HttpReranker(base_url="http://127.0.0.1:1")
    with pytest.raises(InputError, match="query to re-rank by is empty"):
        client.rerank("  ", ["x"])


def test_scores_by_index_checks_every_index() -> None:
    assert scores_by_index([(1, 0.5), (0, 2)], 2) == [2.0, 0.5]
    with pytest.raises(ValueError, match="not one of the 2"):
        scores_by_index([(0, 1.0), (2, 1.0)], 2)
    with pytest.raises(ValueError, match="twice"):
        scores_by_index([(0, 1.0), (0, 1.0)], 2)
    with pytest.raises(TypeError, match="finite"):
        scores_by_index([(0, float("nan"))], 1)
    with pytest.raises(ValueError, match="not one of"):
        scores_by_index([(True, 1.0)], 2)


# -- from the settings, as the engine builds it ------------------------------------------------

def test_settings_build_the_configured_reranker(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("rk-secret\n")
    with FakeRerankServer("jina", api_key="rk-secret") as srv:
        settings = Settings(home=tmp_path, reranker="http", reranker_url=srv.url,
                            reranker_format="jina", reranker_model="rerank-test",
                            reranker_api_key_file=key_file, reranker_timeout=5)
        reranker = make_reranker(settings)
        assert reranker is not None
        try:
            assert reranker.rerank(QUERY, TEXTS) == [overlap(QUERY, t) for t in TEXTS]
        finally:
            reranker.close()
    assert make_reranker(Settings(home=tmp_path)) is None


def test_settings_errors_name_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="known: http, local"):
        make_reranker(Settings(home=tmp_path, reranker="cross-encoder"))
    with pytest.raises(InputError, match="needs SEMSEARCH_RERANKER_URL"):
        make_reranker(Settings(home=tmp_path, reranker="http"))
    with pytest.raises(InputError, match="SEMSEARCH_RERANKER_API_KEY_FILE"):
        make_reranker(Settings(home=tmp_path, reranker="http", reranker_url="http://x:1",
                               reranker_api_key_file=tmp_path / "missing"))
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Settings(home=tmp_path, reranker_format="voyage")  # type: ignore[arg-type]
