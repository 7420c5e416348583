"""One error shape for every non-2xx answer: `{"error": {"type", "message", "status", "request_id", "details"}}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# Generic types for framework-raised HTTP errors (unknown route, wrong method, ...).
_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


class APIError(Exception):
    """An error answered to the client as is (status, machine-readable type, human message)."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers or {}
        self.details = details


def request_id_of(scope_or_request: Request | dict[str, Any]) -> str | None:
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    return scope.get("state", {}).get("request_id")


def error_body(
    status: int, type: str, message: str, request_id: str | None, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type, "message": message, "status": status, "request_id": request_id}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(request: Request, error: APIError) -> JSONResponse:
    body = error_body(error.status, error.type, error.message, request_id_of(request), error.details)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def validation_error(exc: RequestValidationError) -> APIError:
    """Bad JSON is a 400; well-formed JSON with wrong fields or types is a 422 naming each field."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        reason = next((e.get("ctx", {}).get("error") for e in errors if e.get("type") == "json_invalid"), None)
        return APIError(400, "bad_json", f"request body is not valid JSON: {reason or 'decode error'}")
    details = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return APIError(422, "invalid_request", summary or "invalid request", details=details)


def _unparsable_body(exc: StarletteHTTPException) -> APIError | None:
    """FastAPI answers a body its JSON parser raised on (other than a syntax error) with a bare 400: say why."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, APIError):  # raised while the body was read (the JSON depth limit)
        return cause
    if isinstance(cause, UnicodeDecodeError):
        return APIError(400, "bad_json", "request body is not valid JSON: not UTF-8 text")
    if isinstance(cause, RecursionError):
        return APIError(400, "bad_json", "request body is not valid JSON: nested too deeply")
    return APIError(400, "bad_json", f"request body is not valid JSON: {type(cause).__name__}")


def install_error_handlers(app: FastAPI, on_error: Any = None) -> None:
    """`on_error(request, status)` lets the app count errors raised before a route ran (metrics)."""

    async def _api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        if on_error is not None:
            on_error(request, exc.status)
        return error_response(request, exc)

    async def _validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        error = validation_error(exc)
        if on_error is not None:
            on_error(request, error.status)
        return error_response(request, error)

    async def _http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = _unparsable_body(exc) or APIError(
            exc.status_code,
            _HTTP_TYPES.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )
        if on_error is not None:
            on_error(request, error.status)
        return error_response(request, error)

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
