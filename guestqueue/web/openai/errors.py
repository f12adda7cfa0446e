"""The OpenAI front door's errors (openai.py), in OpenAI's shape ``{"error": {message, type, param,
code}}``: :class:`OpenAIError`, any other rejection of guestqueue mapped to that shape with the
retry headers the SDKs honour, and the exception handlers of the front door's app.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...errors import Rejected, WaitTooLong


class OpenAIError(Rejected):
    """An error in OpenAI's shape (the rest of guestqueue's ``{"error", "code"}`` is mapped to it)."""

    def __init__(
        self,
        message: str,
        status_code: int,
        type_: str,
        code: str | None,
        param: str | None = None,
        *,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status_code, self.type, self.openai_code, self.param = status_code, type_, code, param


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error(exc: Rejected) -> Response:
    """Any rejection, answered as OpenAI answers it (with the retry headers the SDKs honour)."""
    if isinstance(exc, OpenAIError):
        type_, code, param = exc.type, exc.openai_code, exc.param
    elif exc.status_code == 429:
        type_, param = "requests", None
        code = exc.code if isinstance(exc, WaitTooLong) else "rate_limit_exceeded"
    elif exc.status_code == 401:
        type_, code, param = "invalid_request_error", "invalid_api_key", None
    elif exc.status_code == 403:
        type_, code, param = "permission_error", exc.code, None
    elif exc.status_code >= 500:
        type_, code, param = "server_error", exc.code, None
    else:
        type_, code, param = "invalid_request_error", exc.code, None
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s), "retry-after-ms": str(int(exc.retry_after_s * 1000))}
    if isinstance(exc, WaitTooLong) and exc.guests_own:  # the caller said it cannot wait: the SDKs do not retry
        headers["x-should-retry"] = "false"
    status = 400 if exc.status_code in (413, 415, 422) else exc.status_code
    return JSONResponse(error_body(exc.message, type_, code, param), status_code=status, headers=headers)


async def _openai_rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Rejected)
    return openai_error(exc)


async def _openai_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return openai_error(OpenAIError(str(exc.detail), exc.status_code, "invalid_request_error", None))


async def _openai_internal_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        error_body("Something went wrong on our side.", "server_error", "internal_error"), status_code=500
    )


# The OpenAI front door answers every error in OpenAI's shape.
OPENAI_HANDLERS: dict[Any, Any] = {
    Rejected: _openai_rejected,
    HTTPException: _openai_http_error,
    Exception: _openai_internal_error,
}
