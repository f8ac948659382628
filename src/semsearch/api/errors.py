"""Every error leaves the API as ``{"error": {"code", "message"}}`` with a fitting status and
never a stack trace. Codes are stable; messages are for people."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from semsearch.errors import (
    BackendError,
    BusyError,
    IdentityMismatchError,
    InputError,
    NotFoundError,
    SemsearchError,
)

log = logging.getLogger("semsearch.api")


class ApiError(Exception):
    """Raised by routes for HTTP-level refusals (auth, limits)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def status_of(exc: SemsearchError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, IdentityMismatchError | BusyError):
        return 409
    if isinstance(exc, InputError):
        return 422
    if isinstance(exc, BackendError):
        return 502
    return 500


def install(app: FastAPI) -> None:
    def count(code: str) -> None:
        metrics = getattr(app.state, "metrics", None)
        if metrics is not None:
            metrics.errors.labels(code=code).inc()

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        count(exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(SemsearchError)
    async def _domain(request: Request, exc: SemsearchError) -> JSONResponse:
        count(exc.code)
        return error_response(status_of(exc), exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            count("malformed_json")
            return error_response(400, "malformed_json", "the request body is not valid JSON")
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        count("invalid_request")
        return error_response(422, "invalid_request",
                              f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}.get(exc.status_code, "http_error")
        count(code)
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        count("internal_error")
        return error_response(500, "internal_error",
                              "internal error; the server log has the details")
