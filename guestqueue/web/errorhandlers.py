"""How guestqueue's apps answer an exception: a rejection (errors.py) as its JSON ``{"error",
"code"}`` with its status, ``Retry-After`` and, where asked, ``Connection: close``, counted on its
line unless already counted; Starlette's own 404 and 405 in the same shape; anything else a 500
that says nothing more. The OpenAI front door has its own (openai/errors.py).
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import Rejected
from .lineapi import line_name


async def _rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Rejected)
    guest = getattr(request.app.state, "guestqueue", None)
    lineup = guest.lineup if guest is not None else None
    queue = lineup.queues.get(line_name(request)) if lineup is not None else None
    if not exc.counted and queue is not None:
        queue.service.stats.rejections[exc.code] += 1
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}
    if exc.close_connection:
        headers["Connection"] = "close"
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        {"error": exc.detail, "code": codes.get(exc.status_code, "http_error")},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "Something went wrong on our side.", "code": "internal_error"}, status_code=500)


EXCEPTION_HANDLERS: dict[Any, Any] = {Rejected: _rejected, HTTPException: _http_error, Exception: _internal_error}
