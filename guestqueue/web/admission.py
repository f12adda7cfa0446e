"""Reading a guest's request: content type, size (enforced while reading), JSON, fields."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect, HTTPConnection, Request

from ..config import Settings
from ..errors import BodyTimeout, BodyTooLarge, InvalidField, InvalidJSON, Rejected, UnsupportedMediaType
from ..joining import KEYED_CLIENT
from ..tenancy.catalog import Principal

MAX_SESSION_ID_CHARS = 256
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_WAIT_LIMIT_S = 86_400  # a guest's max_wait_sec: more than a day would never matter


class ClientGone(Rejected):
    status_code, code = 400, "client_disconnected"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    query: str
    parameters: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    idempotency_key: str | None = None
    max_wait_s: float | None = None


async def read_chat_request(request: Request, settings: Settings, *, upstream_kind: str | None = None) -> ChatRequest:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("Send the question as JSON with Content-Type: application/json.")
    key = request.headers.get("idempotency-key")
    body = await _read_limited(request, settings.max_body_bytes, settings.body_timeout_s)
    data = parse_json_object(body, "The request body")
    if key is not None:
        data["idempotency_key"] = key  # the header is the HTTP spelling of the field
    return validate_chat_request(data, settings, upstream_kind=upstream_kind)


async def read_optional_json(request: Request, settings: Settings) -> dict[str, Any]:
    """A body that may be left out (an admission line's join): ``{}``, or a JSON object."""
    body = await _read_limited(request, settings.max_body_bytes, settings.body_timeout_s)
    if not body.strip():
        return {}
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("Send the body as JSON with Content-Type: application/json (or send none).")
    return parse_json_object(body, "The request body")


async def read_json_list(request: Request, settings: Settings, what: str) -> list[Any]:
    """A JSON list body (a pull worker's chunks), read within the usual size and time limits."""
    body = await _read_limited(request, settings.max_body_bytes, settings.body_timeout_s)
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidJSON(f"{what} is not valid JSON.") from None
    if not isinstance(data, list):
        raise InvalidField(f"{what} must be a JSON list of strings.")
    return data


def parse_json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    """A JSON object, or InvalidJSON (also for invalid UTF-8, NaN and nesting too deep to parse)."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidJSON(f'{what} is not valid JSON. Send {{"query": "..."}}.') from None
    if not isinstance(data, dict):
        raise InvalidJSON(f'{what} must be a JSON object like {{"query": "..."}}.')
    try:
        # JSON can spell what is not text or not a number: a lone surrogate ("\ud800") cannot be
        # written to SQLite or sent upstream as UTF-8, and 1e999 parses to inf, which httpx will
        # not encode. Either would end the request (or the log) later; refuse them now.
        json.dumps(data, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError):
        raise InvalidJSON(f"{what} holds text or numbers that are not valid.") from None
    return data


async def _read_limited(request: Request, limit: int, timeout_s: float) -> bytes:
    too_large = BodyTooLarge(f"The request body is larger than {limit} bytes.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and len(declared) <= 20 and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        # A whole body, not each chunk: a Content-Length larger than what is sent, or a client
        # dribbling a byte now and then, would otherwise hold the connection forever.
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:  # a chunked or lying body is cut off here, not after
                    raise too_large
    except ClientDisconnect:
        raise ClientGone("The client disconnected while sending.") from None
    except TimeoutError:
        raise BodyTimeout(f"The request body did not arrive within {timeout_s:g} seconds.") from None
    return bytes(body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def validate_chat_request(data: dict[str, Any], settings: Settings, *, upstream_kind: str | None = None) -> ChatRequest:
    """The fields of a decoded question (shared by the HTTP and WebSocket transports).

    ``upstream_kind`` is the kind of the upstream actually in use (a workflow passed in
    code wins over the settings); by default the settings' kind."""
    query = data.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InvalidField("'query' must be a non-empty string.")
    if len(query) > settings.max_query_chars:
        raise InvalidField(f"'query' is longer than {settings.max_query_chars} characters.")
    parameters = data.get("parameters")
    if parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise InvalidField("'parameters' must be a JSON object.")
    if (upstream_kind or settings.resolved_upstream_kind) == "openai":
        _check_openai_parameters(parameters)
    session_id = data.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or len(session_id) > MAX_SESSION_ID_CHARS):
        raise InvalidField(f"'session_id' must be a string of at most {MAX_SESSION_ID_CHARS} characters.")
    key = data.get("idempotency_key")
    if key is not None and not (
        isinstance(key, str) and 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS and key.isascii() and key.isprintable()
    ):
        raise InvalidField(
            f"The Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters, e.g. a UUID."
        )
    return ChatRequest(query, parameters, session_id, key, max_wait(data.get("max_wait_sec")))


def max_wait(value: Any, name: str = "'max_wait_sec'") -> float | None:
    """A guest's ``max_wait_sec``: how long it will wait in line, seconds, above 0 and at most a
    day; None if not given."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_WAIT_LIMIT_S:
        raise InvalidField(f"{name} must be a number of seconds above 0 and at most {MAX_WAIT_LIMIT_S}.")
    return float(value)


def max_wait_header(request: HTTPConnection) -> float | None:
    """The ``X-Max-Wait`` header (seconds), for clients that cannot add a body field (OpenAI SDKs)."""
    header = request.headers.get("x-max-wait")
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        seconds = math.nan
    return max_wait(seconds, "X-Max-Wait")


def _check_openai_parameters(parameters: dict[str, Any]) -> None:
    # The conversation and the model are the operator's: a guest's `messages` could add a
    # system prompt, its `model` a costlier model. Other parameters outside
    # GUEST_UPSTREAM_ALLOWED_PARAMETERS are dropped when the upstream request is built.
    if "messages" in parameters:
        raise InvalidField("'parameters.messages' is not accepted: guests cannot set the conversation sent upstream.")
    if "model" in parameters:
        raise InvalidField("'parameters.model' is not accepted: the model is chosen by the server.")


def client_key(request: HTTPConnection) -> str:
    """Who is asking, for per-client limits: the peer address."""
    return request.client.host if request.client else "unknown"


def share_key(request: HTTPConnection, asker: Principal) -> str:
    """Whose share a request counts in on a fair line (fairness.py): its application, else its
    API key, else the peer address."""
    if asker.application is not None:
        return f"app:{asker.application.id}"
    return asker_key(request, asker)


def asker_key(request: HTTPConnection, asker: Principal) -> str:
    """Who asks, for per-client limits: an application's API key by its id (with its own limit,
    GUEST_MAX_PER_KEY), anyone else by the peer address."""
    return f"{KEYED_CLIENT}{asker.key.id}" if asker.key is not None else client_key(request)
