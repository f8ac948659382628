"""Every error leaves the API as ``{"error": {"message", "type", "param", "code"}}`` with a
fitting status and never a stack trace. Codes are stable; messages are for people.

That is OpenAI's error shape, on every path, so one client-side parser fits the whole API and
the official clients read ``code`` and ``param`` from ``/v1/*``. Under ``/v1/`` a request the
server refuses as invalid is 400 (OpenAI's status, which ``openai.BadRequestError`` catches)
where the native endpoints keep 422."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from semsearch.errors import (
    AlreadyExistsError,
    BackendError,
    BusyError,
    IdentityMismatchError,
    InputError,
    NotFoundError,
    SemsearchError,
    StorageFullError,
)

log = logging.getLogger("semsearch.api")

OPENAI_PREFIX = "/v1/"

# OpenAI's error ``type`` per status; the statuses OpenAI never sends get a name in its style.
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 405: "invalid_request_error", 409: "conflict_error",
         413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}

# Custom pydantic error types that carry their own stable code (and 400 everywhere).
TOKEN_ARRAYS = "token_arrays_unsupported"


class ApiError(Exception):
    """Raised by routes for HTTP-level refusals (auth, limits)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.param = param


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None, *, param: str | None = None,
                   path: str = "") -> JSONResponse:
    """``path`` is the request's: under /v1/ an invalid request is 400, as OpenAI answers."""
    if status == 422 and path.startswith(OPENAI_PREFIX):
        status = 400
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    # A message may quote the input it refuses, and that input may not be valid Unicode (a
    # JSON "\\ud800"): escape what cannot be encoded rather than fail to answer at all.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


def status_of(exc: SemsearchError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, IdentityMismatchError | BusyError | AlreadyExistsError):
        return 409
    if isinstance(exc, InputError):
        return 422
    if isinstance(exc, StorageFullError):
        return 507  # Insufficient Storage: the server's disk is full; reads still work
    if isinstance(exc, BackendError):
        return 502
    return 500


def install(app: FastAPI) -> None:
    def count(code: str) -> None:
        state = getattr(app.state, "semsearch", None)
        metrics = state.metrics if state is not None else None
        if metrics is not None:
            metrics.errors.labels(code=code).inc()

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        count(exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.headers, param=exc.param,
                              path=request.url.path)

    @app.exception_handler(SemsearchError)
    async def _domain(request: Request, exc: SemsearchError) -> JSONResponse:
        count(exc.code)
        return error_response(status_of(exc), exc.code, str(exc), path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        path = request.url.path
        if any(e.get("type") == "json_invalid" for e in errors):
            count("malformed_json")
            return error_response(400, "malformed_json", "the request body is not valid JSON",
                                  path=path)
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            param = loc[1] if len(loc) > 1 else None
            where = ".".join(loc[1:] if loc[0] == "body" else loc)
        else:
            param, where = (loc[0] if loc else None), ".".join(loc)
        message = str(first.get("msg", "invalid"))
        if first.get("type") == TOKEN_ARRAYS:
            count(TOKEN_ARRAYS)
            return error_response(400, TOKEN_ARRAYS, message, param=param, path=path)
        count("invalid_request")
        return error_response(422, "invalid_request", f"{where}: {message}" if where else message,
                              param=param, path=path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}.get(exc.status_code, "http_error")
        count(code)
        return error_response(exc.status_code, code, str(exc.detail), path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        count("internal_error")
        return error_response(500, "internal_error",
                              "internal error; the server log has the details",
                              path=request.url.path)
