"""The Amazon Bedrock embedder through boto3 against a real loopback server speaking the
Bedrock runtime API (tests/fakes/bedrock_server.py), which checks every request's SigV4
signature with botocore's own code: Titan one text per call, Cohere batches and input types,
retries and fail-fast, metering and cost, stamped identity, and the CLI end to end.

Nothing here may reach AWS: credentials are static test keys from the environment, shared
files are empty temp files, instance metadata is off, and every socket connection to an
address that is not loopback fails (in this process and in the CLI subprocesses)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semsearch.adapters.embedders import bedrock as bedrock_module
from semsearch.adapters.embedders.bedrock import BedrockEmbedder
from semsearch.adapters.embedders.fake import FakeEmbedder
from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.types import InputType, Mode
from semsearch.errors import BackendError, IdentityMismatchError, InputError, NotFoundError
from semsearch.services.ingest import index_documents
from semsearch.services.quickstart import sample_dir
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import make_embedder, open_engine
from tests.fakes.bedrock_server import (
    ACCESS_KEY,
    COHERE_EN,
    LOOPBACK_GUARD,
    TITAN_V2,
    FakeBedrockServer,
    aws_environment,
)

REGION = "eu-west-3"  # not us-east-1, so a region that did not flow through would show
TEXTS = [
    "The cat sat on the mat.",
    "Quantum computers use qubits instead of classical bits.",
    "A recipe for sourdough bread needs flour, water, salt and a starter.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Bees communicate the location of flowers through a waggle dance.",
    "naïve café résumé — 数据 🙂",
]
TOKENIZER = FakeEmbedder().tokenizer
SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/"
    r"bedrock/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=[0-9a-f]{64}$")


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection this process opens to an address that is not loopback fails."""
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0]).split("%")[0]
            if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
                raise AssertionError(f"a test tried to connect to {host}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(autouse=True)
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str | None]:
    env = aws_environment(tmp_path / "aws")
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="module")
def server() -> Iterator[FakeBedrockServer]:
    with FakeBedrockServer(region=REGION) as srv:
        yield srv


@pytest.fixture
def fake(server: FakeBedrockServer) -> FakeBedrockServer:
    server.reset()
    return server


def titan(server: FakeBedrockServer, **kw: Any) -> BedrockEmbedder:
    args: dict[str, Any] = dict(model=TITAN_V2, tokenizer=TOKENIZER, region=REGION,
                                endpoint_url=server.url, dimensions=256, sleep=lambda s: None)
    args.update(kw)
    return BedrockEmbedder(**args)


def cohere(server: FakeBedrockServer, **kw: Any) -> BedrockEmbedder:
    return titan(server, **{"model": COHERE_EN, "dimensions": None, **kw})


def expected(texts: list[str], dims: int) -> np.ndarray:
    return FakeEmbedder(dimension=dims).embed(texts)


# -- request shapes -------------------------------------------------------------------------

def test_titan_sends_one_text_per_call_with_dimensions_and_normalize(
        fake: FakeBedrockServer) -> None:
    fake.script(*[("slow", 0.2)] * 3)  # the first calls overlap, so concurrency shows
    with titan(fake, concurrency=3) as emb:
        vectors = emb.embed(TEXTS, InputType.PASSAGE)
        ident = emb.identity
    assert vectors.shape == (len(TEXTS), 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected(TEXTS, 256), atol=1e-6)  # in input order
    assert len(fake.requests) == len(TEXTS)
    assert sorted(r.body["inputText"] for r in fake.requests) == sorted(TEXTS)
    assert all(r.body == {"inputText": r.body["inputText"], "dimensions": 256, "normalize": True}
               for r in fake.requests)
    assert all(r.path == "/model/amazon.titan-embed-text-v2%3A0/invoke" for r in fake.requests)
    assert fake.max_inflight == 3  # bounded by the concurrency setting, and used
    assert (ident.provider, ident.model, ident.revision, ident.dimension) == (
        "bedrock", TITAN_V2, "0", 256)
    assert ident.normalized and ident.metric == "cosine" and ident.max_tokens == 8192


def test_titan_default_size_and_titan_input_types_embed_alike(fake: FakeBedrockServer) -> None:
    with titan(fake, dimensions=None) as emb:
        assert emb.identity.dimension == 1024
        query = emb.embed(TEXTS[:2], InputType.QUERY)
        passage = emb.embed(TEXTS[:2], InputType.PASSAGE)
    np.testing.assert_allclose(query, passage, atol=1e-6)
    assert {r.body["dimensions"] for r in fake.requests} == {1024}


def test_cohere_batches_up_to_96_texts_with_the_input_type(fake: FakeBedrockServer) -> None:
    texts = [f"note {i}: {TEXTS[i % len(TEXTS)]}" for i in range(200)]
    with cohere(fake, concurrency=2) as emb:
        passages = emb.embed(texts, InputType.PASSAGE)
        sent = list(fake.requests)
        query = emb.embed(texts[:3], InputType.QUERY)
        ident = emb.identity
    assert sorted(len(r.texts) for r in sent) == [8, 96, 96]
    assert sorted(t for r in sent for t in r.texts) == sorted(texts)
    assert all(r.body["input_type"] == "search_document" and r.body["truncate"] == "NONE"
               for r in sent)
    assert fake.requests[-1].body == {"texts": texts[:3], "input_type": "search_query",
                                      "truncate": "NONE"}
    want = expected([f"search_document {t}" for t in texts], 1024)
    np.testing.assert_allclose(passages, want, atol=1e-6)
    # the model embeds a query unlike a passage of the same text
    assert float(np.min(np.sum(query * passages[:3], axis=1))) < 0.999
    assert (ident.provider, ident.model, ident.revision, ident.dimension, ident.max_tokens) == (
        "bedrock", COHERE_EN, "v3", 1024, 512)


def test_tokens_come_from_bedrock_else_from_the_tokenizer(fake: FakeBedrockServer) -> None:
    counts = [TOKENIZER.count_tokens(t) for t in TEXTS]
    with cohere(fake) as emb:
        emb.embed(TEXTS)
        assert emb.meter.snapshot().tokens == sum(counts)
    assert fake.requests[-1].status == 200
    with FakeBedrockServer(region=REGION, token_header=False) as quiet:
        with cohere(quiet) as emb:
            emb.embed(TEXTS)  # no header: the local tokenizer's estimate
            assert emb.meter.snapshot().tokens == sum(counts)
        with titan(quiet) as emb:
            emb.embed(TEXTS)  # no header: Titan's inputTextTokenCount
            snap = emb.meter.snapshot()
            assert (snap.calls, snap.items, snap.tokens) == (len(TEXTS), len(TEXTS), sum(counts))


# -- signing --------------------------------------------------------------------------------

def test_every_request_is_sigv4_signed_for_bedrock_and_the_region(
        fake: FakeBedrockServer) -> None:
    with titan(fake) as emb:
        emb.embed(TEXTS[:3])
    with cohere(fake) as emb:
        emb.embed(TEXTS[:3])
    assert len(fake.requests) == 4 and all(r.status == 200 for r in fake.requests)
    for r in fake.requests:
        m = SIGV4.match(r.headers["authorization"])
        assert m, r.headers["authorization"]
        assert (m["key"], m["region"]) == (ACCESS_KEY, REGION)
        assert {"host", "x-amz-date", "content-type"} <= set(m["signed"].split(";"))
        assert re.fullmatch(r"\d{8}T\d{6}Z", r.headers["x-amz-date"])
        assert m["date"] == r.headers["x-amz-date"][:8]


def test_a_wrong_secret_or_region_is_refused_as_aws_does(fake: FakeBedrockServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with titan(fake, region="us-west-2") as emb, \
            pytest.raises(BackendError, match=r"us-west-2.*scoped to a valid region"):
        emb.embed(TEXTS[:1])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with titan(fake) as emb:
        with pytest.raises(BackendError, match=r"signature we calculated does not match.*"
                                               r"AWS_ACCESS_KEY_ID") as err:
            emb.embed(TEXTS[:1])
        assert emb.meter.snapshot().retries == 0
    assert not isinstance(err.value, InputError)
    assert [r.status for r in fake.requests] == [403, 403]  # once each: no retries
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN")
    with titan(fake) as emb, pytest.raises(BackendError, match="security token"):
        emb.embed(TEXTS[:1])


def test_no_credentials_anywhere_fails_without_a_network_call(
        fake: FakeBedrockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with titan(fake) as emb:
        assert emb.identity.dimension == 256  # the identity needs no credentials
        with pytest.raises(BackendError, match=r"no usable AWS credentials.*AWS_PROFILE"):
            emb.embed(TEXTS[:1])
    assert fake.requests == []


def test_the_region_comes_from_the_setting_else_aws_region_else_the_default(
        fake: FakeBedrockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="SEMSEARCH_EMBEDDER_REGION or AWS_REGION"):
        titan(fake, region=None)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with titan(fake, region=None) as emb:
        assert emb.region == REGION
        emb.embed(TEXTS[:1])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_REGION", REGION)
    with titan(fake, region=None) as emb:
        assert emb.region == REGION
        emb.embed(TEXTS[:1])
    assert titan(fake, region="sa-east-1").region == "sa-east-1"
    assert [SIGV4.match(r.headers["authorization"])["region"]  # type: ignore[index]
            for r in fake.requests] == [REGION, REGION]


# -- retries and fail-fast ------------------------------------------------------------------

def test_throttling_and_server_errors_are_retried_then_succeed(fake: FakeBedrockServer) -> None:
    fake.script("throttle", "not_ready", "503", "500", "malformed", "drop")
    delays: list[float] = []
    with titan(fake, sleep=delays.append, backoff_base=0.5, backoff_max=3.0,
               max_retries=6) as emb:
        vectors = emb.embed(TEXTS[:1])
        snap = emb.meter.snapshot()
    np.testing.assert_allclose(vectors, expected(TEXTS[:1], 256), atol=1e-6)
    assert (snap.calls, snap.retries, snap.errors) == (1, 6, 6)
    assert len(fake.requests) == 7
    # full jitter under a doubling cap: [0, 0.5], [0, 1], [0, 2], then capped at 3
    caps = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert all(0 <= d <= c for d, c in zip(delays, caps, strict=True))


def test_a_client_timeout_is_retried(fake: FakeBedrockServer) -> None:
    fake.script(("slow", 1.5))
    with titan(fake, timeout=0.3) as emb:
        vectors = emb.embed(TEXTS[:1])
        snap = emb.meter.snapshot()
    np.testing.assert_allclose(vectors, expected(TEXTS[:1], 256), atol=1e-6)
    assert (snap.calls, snap.retries, snap.errors) == (1, 1, 1)


def test_retries_exhausted_is_a_clear_error(fake: FakeBedrockServer) -> None:
    fake.script(*["throttle"] * 3)
    with titan(fake, max_retries=2) as emb:
        with pytest.raises(BackendError, match=r"failed after 3 attempts: ThrottlingException"
                                               r".*SEMSEARCH_EMBEDDER_MAX_RETRIES"):
            emb.embed(TEXTS[:1])
        snap = emb.meter.snapshot()
    assert (snap.calls, snap.retries, snap.errors) == (0, 2, 3)
    assert [r.status for r in fake.requests] == [429, 429, 429]


def test_access_denied_fails_fast_naming_model_region_and_what_to_check(
        fake: FakeBedrockServer) -> None:
    fake.script("denied")
    with titan(fake) as emb:
        with pytest.raises(BackendError) as err:
            emb.embed(TEXTS[:1])
        snap = emb.meter.snapshot()
    message = str(err.value)
    for part in (TITAN_V2, REGION, "AccessDeniedException", "Model access",
                 "bedrock:InvokeModel"):
        assert part in message
    assert not isinstance(err.value, InputError)  # no document is at fault
    assert (snap.retries, snap.errors, len(fake.requests)) == (0, 1, 1)


@pytest.mark.parametrize("answer", ["validation", "not_found"])
def test_an_unknown_model_fails_fast(answer: str) -> None:
    with FakeBedrockServer(region=REGION, unknown_model=answer, models=()) as srv:
        with titan(srv, concurrency=1) as emb, pytest.raises(NotFoundError) as err:
            emb.embed(TEXTS[:3])
        assert len(srv.requests) == 1  # not retried, and the queued calls were cancelled
    assert isinstance(err.value, BackendError) and not isinstance(err.value, InputError)
    for part in (TITAN_V2, REGION, "SEMSEARCH_EMBEDDER_MODEL"):
        assert part in str(err.value)


def test_a_model_not_enabled_for_the_account_is_access_denied() -> None:
    with FakeBedrockServer(region=REGION, denied_models=(COHERE_EN, TITAN_V2)) as srv:
        with cohere(srv) as emb, pytest.raises(BackendError, match="Model access"):
            emb.embed(TEXTS)
        assert len(srv.requests) == 1
        # a call per text: no more calls than were in flight when the first was refused
        with titan(srv, concurrency=2) as emb, pytest.raises(BackendError, match="Model access"):
            emb.embed(TEXTS * 5)
        assert 2 <= len(srv.requests) <= 3


def test_inputs_are_checked_before_anything_is_sent(fake: FakeBedrockServer) -> None:
    long_text = "word " * 500  # 2,500 characters: over Cohere's 2,048
    with cohere(fake) as emb:
        with pytest.raises(InputError, match=r"#1 has 2,500 characters.*2,048.*TRUNCATE"):
            emb.embed(["fine", long_text])
        assert fake.requests == [] and emb.meter.snapshot().calls == 0
    with cohere(fake, truncate=True) as emb:
        emb.embed(["fine", long_text])
        assert emb.meter.snapshot().truncated == 1
    (sent,) = fake.requests
    assert sent.body["truncate"] == "END" and len(sent.texts[1]) <= 2048


def test_a_text_bedrock_refuses_is_an_input_error(fake: FakeBedrockServer) -> None:
    """The server counts tokens its own way (here: over Cohere's 512, under the limit the
    client was given), so the refusal comes from Bedrock: an InputError, which lets a write
    find and skip the refused document, and no retry."""
    with cohere(fake, max_input_tokens=1000) as emb:
        with pytest.raises(InputError, match=r"rejected the request \(ValidationException"):
            emb.embed(["fine", "a " * 600])
        assert emb.meter.snapshot().retries == 0
    assert len(fake.requests) == 1


def test_configuration_errors_are_clear(fake: FakeBedrockServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match=r"256 or 512 or 1024.*not 300"):
        titan(fake, dimensions=300)
    with pytest.raises(InputError, match=r"1024-dimensional vectors, not 256"):
        cohere(fake, dimensions=256)
    with pytest.raises(InputError, match=r"does not know the model 'meta\.llama3'.*titan"):
        titan(fake, model="meta.llama3")
    with pytest.raises(InputError, match="must look like"):
        titan(fake, endpoint_url="bedrock.local")
    with pytest.raises(InputError, match="needs SEMSEARCH_EMBEDDER_MODEL"):
        make_embedder(Settings(embedder="bedrock"))
    real = bedrock_module.util.find_spec
    monkeypatch.setattr(bedrock_module.util, "find_spec",
                        lambda name, *a: None if name == "boto3" else real(name, *a))
    with pytest.raises(InputError, match=re.escape('pip install -e ".[bedrock]"')):
        titan(fake)


def test_model_ids_in_other_spellings_are_recognised(fake: FakeBedrockServer) -> None:
    arn = f"arn:aws:bedrock:{REGION}::foundation-model/{TITAN_V2}"
    assert titan(fake, model=f"eu.{TITAN_V2}").identity.dimension == 256
    assert titan(fake, model=arn).identity.revision == "0"
    assert cohere(fake, model="cohere.embed-multilingual-v3").identity.dimension == 1024
    cohere_arn = f"arn:aws:bedrock:{REGION}::foundation-model/{COHERE_EN}"
    assert cohere(fake, model=cohere_arn).identity.revision == "v3"
    v1 = titan(fake, model="amazon.titan-embed-text-v1", dimensions=None)
    assert v1.identity.dimension == 1536
    v1.embed(TEXTS[:1])
    assert fake.requests[-1].body == {"inputText": TEXTS[0]}


def test_boto3_is_not_imported_on_the_default_path() -> None:
    code = ("import sys, semsearch, semsearch.wiring, semsearch.cli.main; "
            "from semsearch.config import Settings; from semsearch.wiring import make_embedder; "
            "make_embedder(Settings(embedder='fake')); "
            "print(sorted({'boto3', 'botocore'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- through the engine and the CLI ---------------------------------------------------------

def bedrock_settings(server: FakeBedrockServer, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(embedder="bedrock", embedder_model=TITAN_V2,
                                embedder_base_url=server.url, embedder_region=REGION,
                                embedder_dimensions=512, embedder_price_per_mtok=0.02)
    base.update(kw)
    return Settings(**base)


def test_index_and_search_meter_tokens_and_cost(settings: Settings,
                                                fake: FakeBedrockServer) -> None:
    engine = open_engine(bedrock_settings(fake))
    try:
        report = index_documents(engine, "docs", iter_documents(sample_dir()))
        billed = sum(TOKENIZER.count_tokens(r.body["inputText"]) for r in fake.requests)
        hits = search(engine, "docs", SearchRequest("storing vegetables refrigerator carrots",
                                                    mode=Mode.DENSE, k=1)).hits
        again = index_documents(engine, "docs", iter_documents(sample_dir()))
    finally:
        engine.close()
    assert all(r.status == 200 and r.body["dimensions"] == 512 for r in fake.requests)
    assert report.embedded == report.chunks == report.model_calls  # Titan: a call per text
    assert report.tokens == billed > 1000  # what Bedrock reported, not an estimate
    assert report.cost == pytest.approx(billed * 0.02 / 1e6)
    assert hits[0].doc_id == "storing-vegetables.md"
    assert again.model_calls == 0 and again.unchanged == again.documents


def test_a_bedrock_collection_refuses_another_embedder(settings: Settings,
                                                       fake: FakeBedrockServer) -> None:
    engine = open_engine(bedrock_settings(fake))
    try:
        index_documents(engine, "aws", list(iter_documents(sample_dir()))[:2])
        info = engine.store.get_collection("aws")
    finally:
        engine.close()
    assert (info.identity.provider, info.identity.model, info.identity.dimension) == (
        "bedrock", TITAN_V2, 512)
    for other, pattern in [
            (Settings(embedder="fake", embedder_dimensions=512), r"bedrock.*fake"),
            (bedrock_settings(fake, embedder_dimensions=256), r"\|512\|.*\|256\|"),
            (bedrock_settings(fake, embedder_model=COHERE_EN, embedder_dimensions=None),
             r"titan.*cohere")]:
        engine = open_engine(other)
        try:
            with pytest.raises(IdentityMismatchError, match=pattern):
                search(engine, "aws", SearchRequest("vegetables"))
        finally:
            engine.close()


def test_cli_index_and_search_end_to_end(settings: Settings, fake: FakeBedrockServer,
                                         tmp_path: Path) -> None:
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(LOOPBACK_GUARD)
    env = {k: v for k, v in os.environ.items() if v is not None}
    env.update({"SEMSEARCH_HOME": str(settings.home), "SEMSEARCH_NO_PROGRESS": "1",
                "SEMSEARCH_EMBEDDER": "bedrock", "SEMSEARCH_EMBEDDER_MODEL": COHERE_EN,
                "SEMSEARCH_EMBEDDER_BASE_URL": fake.url, "AWS_REGION": REGION,
                "SEMSEARCH_EMBEDDER_PRICE_PER_MTOK": "0.1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(guard),
                                                            env.get("PYTHONPATH")]))})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "semsearch", *args], capture_output=True,
                              text=True, env=env, timeout=300)

    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection("
                            "('192.0.2.1', 443), timeout=5)"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert "loopback only" in probe.stderr  # the guard is in force in the subprocesses

    indexed = run("index", str(sample_dir()), "-c", "aws", "--json")
    assert indexed.returncode == 0, indexed.stderr
    report = json.loads(indexed.stdout)
    assert report["documents"] == 12 and report["embedded"] == report["chunks"]
    assert 1 <= report["model_calls"] < report["chunks"]  # Cohere batches
    assert report["tokens"] > 1000
    found = run("search", "storing vegetables refrigerator carrots", "-c", "aws", "--json",
                "--k", "1")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["doc_id"] == "storing-vegetables.md"
    cols = json.loads(run("collections", "--json").stdout)["collections"]
    assert cols[0]["identity"]["provider"] == "bedrock"
    assert cols[0]["identity"]["model"] == COHERE_EN
    sent = [r for r in fake.requests if r.status == 200]
    assert {r.body["input_type"] for r in sent} == {"search_document", "search_query"}
    assert all(SIGV4.match(r.headers["authorization"]) for r in fake.requests)

    fake.script("denied")
    denied = run("search", "vegetables", "-c", "aws", "--mode", "dense")
    assert denied.returncode != 0 and "Traceback" not in denied.stderr
    assert "Model access" in denied.stderr and REGION in denied.stderr
