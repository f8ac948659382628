"""A real Amazon Bedrock runtime on loopback, for testing the bedrock embedder through boto3's
whole stack (endpoint resolution, SigV4 signing, connection pooling, error parsing).

It speaks the REST API boto3 speaks (``POST /model/{modelId}/invoke``) and checks every
request as AWS does before answering: the ``Authorization`` header must be a SigV4 signature
for the service ``bedrock`` and the server's region, signing at least ``host`` and
``x-amz-date``, by a known access key, recent, and correct: the signature is recomputed with
botocore's own SigV4 code and the key's secret, and a wrong one is a 403
``InvalidSignatureException``. Then it answers as Bedrock does: Titan Text Embeddings (one
text per call, ``dimensions``, ``normalize``) and Cohere Embed v3 (up to 96 texts,
``input_type``), JSON bodies, ``X-Amzn-Bedrock-Input-Token-Count``, and errors as an
``x-amzn-ErrorType`` header with a ``{"message": ...}`` body. ``script()`` queues faults,
one per request::

    with FakeBedrockServer() as server:
        server.script("throttle", "throttle")
        ...  # SEMSEARCH_EMBEDDER_BASE_URL=server.url, credentials from aws_environment()

Vectors come from the fake embedder (a hashed bag of words: texts that share words are
close, the same on every CPU), of the size the model and request call for; a Cohere query
embeds unlike a passage of the same text, as the real model's ``input_type`` makes it."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from semsearch.adapters.embedders.fake import FakeEmbedder
from tests.fakes.loopback import LoopbackServer, QuietHandler

ACCESS_KEY = "AKIDSEMSEARCHTEST01"
SECRET_KEY = "semsearch/test/secret/key/not/a/real/one"
TITAN_V2 = "amazon.titan-embed-text-v2:0"
TITAN_V1 = "amazon.titan-embed-text-v1"
COHERE_EN = "cohere.embed-english-v3"
COHERE_ML = "cohere.embed-multilingual-v3"
MODELS = (TITAN_V2, TITAN_V1, COHERE_EN, COHERE_ML)
Fault = str | tuple[str, float]
FAULTS = ("throttle", "not_ready", "500", "503", "denied", "malformed", "drop", "slow")
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/\s]+)/(?P<date>\d{8})/(?P<region>[^/\s]+)/"
    r"(?P<service>[^/\s]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;_.-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$")
_MAX_SKEW = 15 * 60  # seconds AWS tolerates between the request's date and its own clock
_BAD_SIGNATURE = ("The request signature we calculated does not match the signature you "
                  "provided. Check your AWS Secret Access Key and signing method. Consult the "
                  "service documentation for details.")

# Every variable through which boto3 could find real credentials, a real region or endpoint,
# a proxy, or the instance metadata service: the tests set their own and unset the rest.
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT", "AWS_STS_REGIONAL_ENDPOINTS", "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
    "all_proxy", "NO_PROXY", "no_proxy")


def aws_environment(root: Path, *, access_key: str = ACCESS_KEY,
                    secret_key: str = SECRET_KEY) -> dict[str, str | None]:
    """The AWS environment a test runs in: static credentials, no shared files (empty ones
    under ``root``), no instance metadata, no proxy. None = unset the variable."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config").write_text("")
    (root / "credentials").write_text("")
    env: dict[str, str | None] = dict.fromkeys(AWS_VARIABLES)
    env.update({"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_CONFIG_FILE": str(root / "config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(root / "credentials"),
                "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost"})
    return env


# A sitecustomize for subprocesses (the CLI run as a user runs it): any connection to an
# address that is not loopback fails at once, so a test can never reach real AWS.
LOOPBACK_GUARD = '''
import ipaddress, socket

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConnectionRefusedError(f"test guard: no connection to {host} (loopback only)")


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
'''


@dataclass
class RecordedRequest:
    """Recorded when the request arrives (so a slow answer still running when a test ends
    never lands among the next test's requests); ``status`` and ``fault`` are filled in
    as it is answered."""

    model: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    status: int = 0  # what the server answered (0: nothing yet, or the connection dropped)
    fault: Fault | None = None  # the scripted behaviour this request received

    @property
    def texts(self) -> list[str]:
        if not isinstance(self.body, dict):
            return []
        if "texts" in self.body:
            return list(self.body["texts"])
        return [self.body["inputText"]] if "inputText" in self.body else []


class BedrockError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _malformed(detail: str) -> BedrockError:
    return BedrockError(400, "ValidationException",
                        f"Malformed input request: {detail}, please reformat your input and "
                        "try again.")


class FakeBedrockServer(LoopbackServer):
    """``models`` are served; ``denied_models`` answer 403 AccessDeniedException (a model
    not enabled for the account); any other id answers as ``unknown_model`` says: 400
    ValidationException ("The provided model identifier is invalid.", what Bedrock says
    today) or 404 ResourceNotFoundException. ``token_header=False`` leaves out
    ``X-Amzn-Bedrock-Input-Token-Count``."""

    def __init__(self, *, region: str = "us-east-1",
                 credentials: Mapping[str, str] | None = None,
                 models: Iterable[str] = MODELS, denied_models: Iterable[str] = (),
                 unknown_model: str = "validation", token_header: bool = True) -> None:
        if unknown_model not in ("validation", "not_found"):
            raise ValueError("unknown_model is 'validation' or 'not_found'")
        self.region = region
        self.credentials = dict(credentials or {ACCESS_KEY: SECRET_KEY})
        self.models = set(models)
        self.denied_models = set(denied_models)
        self.unknown_model = unknown_model
        self.token_header = token_header
        self.requests: list[RecordedRequest] = []
        self._embedders: dict[int, FakeEmbedder] = {}
        super().__init__()

    NAME = "fake-bedrock"
    FAULTS = FAULTS

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def url(self) -> str:
        return self.origin

    # -- scripting and inspection ------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self.max_inflight = 0

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- what AWS checks first: the signature -----------------------------------------------

    def check_signature(self, method: str, path: str, headers: Mapping[str, str],
                        body: bytes) -> None:
        """Raises BedrockError (403, or 400 for a malformed header) as AWS would."""
        auth = headers.get("authorization")
        if not auth:
            raise BedrockError(403, "MissingAuthenticationTokenException",
                               "Missing Authentication Token")
        m = _AUTH.match(auth.strip())
        if m is None:
            raise BedrockError(400, "IncompleteSignatureException",
                               f"Authorization header is not a SigV4 signature: {auth[:60]!r}")
        key, signed = m["key"], m["signed"].split(";")
        secret = self.credentials.get(key)
        if secret is None:
            raise BedrockError(403, "UnrecognizedClientException",
                               "The security token included in the request is invalid.")
        if m["service"] != "bedrock":
            raise BedrockError(403, "InvalidSignatureException",
                               "Credential should be scoped to correct service: 'bedrock'.")
        if m["region"] != self.region:
            raise BedrockError(403, "InvalidSignatureException",
                               f"Credential should be scoped to a valid region, not "
                               f"'{m['region']}'. ")
        missing = {"host", "x-amz-date"} - set(signed)
        if missing or any(h not in headers for h in signed):
            raise BedrockError(403, "InvalidSignatureException",
                               f"'Host' and 'X-Amz-Date' must be signed; signed: {signed}")
        amz_date = headers["x-amz-date"]
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise BedrockError(400, "IncompleteSignatureException",
                               f"X-Amz-Date {amz_date!r} is not in ISO8601 basic format"
                               ) from None
        if abs((datetime.now(UTC) - when).total_seconds()) > _MAX_SKEW:
            raise BedrockError(403, "InvalidSignatureException",
                               f"Signature expired: {amz_date} is now earlier than the "
                               "allowed window.")
        if m["date"] != amz_date[:8]:
            raise BedrockError(403, "InvalidSignatureException",
                               "Date in Credential scope does not match YYYYMMDD from X-Amz-Date")
        # Recompute exactly what the client signed: the same headers, path and body.
        request = AWSRequest(method=method, url=f"http://{headers['host']}{path}", data=body,
                             headers={h: headers[h] for h in signed})
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(key, secret, headers.get("x-amz-security-token")),
                           "bedrock", self.region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if signer.signed_headers(signer.headers_to_sign(request)) != m["signed"] \
                or expected != m["signature"]:
            raise BedrockError(403, "InvalidSignatureException", _BAD_SIGNATURE)

    # -- then the model --------------------------------------------------------------------

    def invoke(self, model: str, body: Any) -> tuple[dict[str, Any], int]:
        """What a healthy Bedrock answers: (JSON payload, input tokens)."""
        if model in self.denied_models:
            raise BedrockError(403, "AccessDeniedException",
                               "You don't have access to the model with the specified model ID.")
        if model not in self.models:
            if self.unknown_model == "not_found":
                raise BedrockError(404, "ResourceNotFoundException",
                                   f"Could not resolve the foundation model from the provided "
                                   f"model identifier {model}.")
            raise BedrockError(400, "ValidationException",
                               "The provided model identifier is invalid.")
        if not isinstance(body, dict):
            raise BedrockError(400, "ValidationException",
                               "Malformed input request, please reformat your input and try "
                               "again.")
        if model.startswith("cohere."):
            return self._cohere(body)
        return self._titan(model, body)

    def _titan(self, model: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        allowed = {"inputText", "dimensions", "normalize", "embeddingTypes"} \
            if model == TITAN_V2 else {"inputText"}
        extra = sorted(set(body) - allowed)
        if extra:
            raise _malformed(f"extraneous key [{extra[0]}] is not permitted")
        text = body.get("inputText")
        if not isinstance(text, str):
            raise _malformed("required key [inputText] not found")
        if not text:
            raise _malformed("#/inputText: expected minLength: 1, actual: 0")
        if len(text) > 50_000:
            raise _malformed(f"#/inputText: expected maxLength: 50000, actual: {len(text)}")
        tokens = self._count(text)
        if tokens > 8192:
            raise BedrockError(400, "ValidationException",
                               f"Too many input tokens. Max input tokens: 8192, request input "
                               f"token count: {tokens}")
        dims, normalize = 1536, True
        if model == TITAN_V2:
            dims = body.get("dimensions", 1024)
            if dims not in (256, 512, 1024) or type(dims) is not int:
                raise _malformed(f"#/dimensions: {dims} is not a valid enum value")
            normalize = body.get("normalize", True)
            if not isinstance(normalize, bool):
                raise _malformed("#/normalize: expected type: Boolean")
        vector = self._vectors([text], dims)[0]
        if not normalize:
            vector = vector * 3.5  # Titan's raw vectors are not unit length
        floats = vector.tolist()
        payload: dict[str, Any] = {"embedding": floats, "inputTextTokenCount": tokens}
        if model == TITAN_V2:
            payload["embeddingsByType"] = {"float": floats}
        return payload, tokens

    def _cohere(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        extra = sorted(set(body) - {"texts", "input_type", "truncate", "embedding_types",
                                    "images"})
        if extra:
            raise _malformed(f"extraneous key [{extra[0]}] is not permitted")
        texts, input_type = body.get("texts"), body.get("input_type")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _malformed("required key [texts] not found")
        if len(texts) > 96:
            raise _malformed(f"#/texts: expected maximum item count: 96, found: {len(texts)}")
        too_long = next((t for t in texts if len(t) > 2048), None)
        if too_long is not None:
            raise _malformed(f"#/texts/{texts.index(too_long)}: expected maxLength: 2048, "
                             f"actual: {len(too_long)}")
        if input_type not in ("search_document", "search_query", "classification",
                              "clustering"):
            raise _malformed(f"#/input_type: {input_type} is not a valid enum value")
        truncate = body.get("truncate", "NONE")
        if truncate not in ("NONE", "START", "END"):
            raise _malformed(f"#/truncate: {truncate} is not a valid enum value")
        counts = [self._count(t) for t in texts]
        if truncate == "NONE" and counts and max(counts) > 512:
            raise BedrockError(400, "ValidationException",
                               f"invalid request: text #{counts.index(max(counts))} has "
                               f"{max(counts)} tokens, over the model's limit of 512")
        # The model prepends a token per input type, so a query embeds unlike a passage.
        vectors = self._vectors([f"{input_type} {t}" for t in texts], 1024)
        payload = {"id": str(uuid.uuid4()), "texts": texts, "response_type": "embeddings_floats",
                   "embeddings": [v.tolist() for v in vectors]}
        return payload, sum(counts)

    def _count(self, text: str) -> int:
        return max(1, len(self._embedder(8).tokenizer.token_spans(text)))

    def _embedder(self, dims: int) -> FakeEmbedder:
        with self._lock:
            if dims not in self._embedders:
                self._embedders[dims] = FakeEmbedder(dimension=dims, max_tokens=512)
            return self._embedders[dims]

    def _vectors(self, texts: list[str], dims: int) -> np.ndarray:
        return self._embedder(dims).embed(texts)


class _Handler(QuietHandler):
    fake: FakeBedrockServer

    def _handle(self, method: str) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.fake._enter()
        try:
            self._serve(method, headers, raw)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up
            self.close_connection = True
        finally:
            self.fake._leave()

    def _serve(self, method: str, headers: dict[str, str], raw: bytes) -> None:
        path = urlsplit(self.path).path
        m = re.fullmatch(r"/model/([^/]+)/invoke", path)
        model = unquote(m[1]) if m else ""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(model, path, headers, body)
        self.fake._record(record)
        try:
            self.fake.check_signature(method, self.path, headers, raw)
            if method != "POST" or m is None:
                raise BedrockError(404, "UnknownOperationException", f"{method} {path}")
            fault = record.fault = self.fake._next_fault()
            kind, arg = fault if isinstance(fault, tuple) else (fault, None)
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if kind == "slow":
                time.sleep(float(arg or 0))
            _raise_fault(kind)
            payload, tokens = self.fake.invoke(model, body)
        except BedrockError as exc:
            record.status = exc.status
            self._send(exc.status, json.dumps({"message": exc.message}).encode(),
                       {"x-amzn-ErrorType": f"{exc.code}:http://internal.amazon.com/coral/"
                                            "com.amazon.bedrock/"})
            return
        record.status = 200
        data = json.dumps(payload).encode()
        if record.fault == "malformed":
            data = data[: len(data) // 2]  # a body cut short mid-JSON
        extra = {"X-Amzn-Bedrock-Invocation-Latency": "12"}
        if self.fake.token_header:
            extra["X-Amzn-Bedrock-Input-Token-Count"] = str(tokens)
        self._send(200, data, extra)

    def _send(self, status: int, data: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _raise_fault(kind: str | None) -> None:
    if kind == "throttle":
        raise BedrockError(429, "ThrottlingException",
                           "Too many requests, please wait before trying again.")
    if kind == "not_ready":
        raise BedrockError(429, "ModelNotReadyException",
                           "Model is not ready for inference. Wait and try your request again.")
    if kind == "500":
        raise BedrockError(500, "InternalServerException",
                           "The server encountered an internal error while processing the "
                           "request.")
    if kind == "503":
        raise BedrockError(503, "ServiceUnavailableException",
                           "The service is temporarily unable to handle the request.")
    if kind == "denied":
        raise BedrockError(403, "AccessDeniedException",
                           "You don't have access to the model with the specified model ID.")
