"""The WebSocket transport: ``WS /api/v1/guest/ws``, one question per connection.

The guest sends one JSON text message, ``{"query": "...", "parameters": {...},
"session_id": "..."}``; the older form ``{"parameters": {"query": "...", ...}}``
is accepted too (the query is taken out of ``parameters``, the rest is passed
upstream). It then receives JSON messages, each with a ``type``:

==================  ==========================================================
``queue_position``  ``request_id, position, total_ahead, queue_size, estimated_wait_sec, estimated_wait_range_sec``
``processing``      ``request_id``
``answer_chunk``    ``request_id, data`` (the text)
``result``          ``request_id, data`` (as the SSE ``workflow_complete`` payload) — last
``error``           ``message, code`` (+ ``request_id``, ``fallback`` when known) — last
``queue_full``      ``message, retry_after`` — last
``admitted``        ``request_id, data`` (an admission line's token, as the SSE event) — last
==================  ==========================================================

The guest may send ``{"type": "cancel"}`` while waiting. After the last message
the server closes the connection: 1000 after an answer or an ending, 1007 for
a message that is not JSON (or nested too deep to read), 1008 for invalid fields, 1009 for a message over
``GUEST_MAX_BODY_BYTES``, 1013 (try again later) for a full line, a per-client
limit or a restart.

A WebSocket guest shares the line, limits and log with SSE guests: admission
goes through :meth:`QueueService.submit`, and the connection is a subscriber of
its ticket, so a guest who disconnects keeps its place for the reconnect grace
(and may resume it over SSE, ``GET /chat/{request_id}/events``) before it is let go.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import BodyTooLarge, InvalidField, InvalidJSON, LineFull, Rejected
from ..events import ANSWER_CHUNK, ERROR, PROCESSING, QUEUED, RECONNECT, TIMEOUT, WORKFLOW_COMPLETE, Event
from ..service import QueueService
from ..tickets import Status, Ticket
from .admission import client_key, parse_json_object, validate_chat_request
from .origin import origin_allowed

logger = logging.getLogger("guestqueue")

CLOSE_NORMAL = 1000
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013

CLOSE_CODES: dict[type[Rejected], int] = {
    InvalidJSON: CLOSE_INVALID_DATA,
    InvalidField: CLOSE_POLICY,
    BodyTooLarge: CLOSE_TOO_BIG,
}


async def serve_websocket(
    websocket: WebSocket, service: QueueService, *, tier: str | None = None, share: str | None = None
) -> None:
    """Admit one question from ``websocket`` (at the asker's priority ``tier``) and stream its
    lifecycle as JSON messages."""
    if not _origin_allowed(websocket, service.settings.cors_origin_list):
        # Before accepting: the handshake is answered 403 (CORS does not cover WebSockets).
        await websocket.close(CLOSE_POLICY, reason="forbidden_origin")
        return
    await websocket.accept()
    try:
        ticket = await _admit(websocket, service, tier, share)
    except WebSocketDisconnect:
        return
    except Rejected as exc:
        await _reject(websocket, exc)
        return
    service.subscribe(ticket)
    reason = "disconnected"
    try:
        if await _converse(websocket, service, ticket):
            reason = "send_timeout"
    finally:
        service.unsubscribe(ticket, reason=reason)


def _origin_allowed(websocket: WebSocket, allowed: list[str]) -> bool:
    """A browser page of another origin may not open a socket here unless GUEST_CORS_ORIGINS lists it
    (the rule of web/origin.py: CORS does not cover WebSockets, and without it any page could talk
    to a local server as its operator). Browsers send Origin on every WebSocket; clients without
    one are not browsers: allowed."""
    origin = websocket.headers.get("origin")
    return origin is None or origin_allowed(origin, websocket.headers.get("host"), allowed)


async def _admit(websocket: WebSocket, service: QueueService, tier: str | None, share: str | None) -> Ticket:
    settings = service.settings
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        raise InvalidJSON('Send the question as a JSON text message, like {"query": "..."}.')
    if len(text.encode()) > settings.max_body_bytes:
        raise BodyTooLarge(f"The message is larger than {settings.max_body_bytes} bytes.")
    data = _from_older_form(parse_json_object(text, "The message"))
    body = validate_chat_request(data, settings, upstream_kind=service.upstream_kind)
    return await service.submit(
        body.query,
        client=client_key(websocket),
        parameters=body.parameters,
        session_id=body.session_id,
        idempotency_key=body.idempotency_key,
        max_wait_s=body.max_wait_s,
        tier=tier,
        share=share,
    )


def _from_older_form(data: dict[str, Any]) -> dict[str, Any]:
    """``{"parameters": {"query": ...}}`` (older clients) as ``{"query": ..., "parameters": {...}}``."""
    parameters = data.get("parameters")
    if "query" in data or not isinstance(parameters, dict) or "query" not in parameters:
        return data
    rest = {key: value for key, value in parameters.items() if key != "query"}
    return {**data, "query": parameters["query"], "parameters": rest}


async def _reject(websocket: WebSocket, exc: Rejected) -> None:
    if isinstance(exc, LineFull):
        message: dict[str, Any] = {"type": "queue_full", "message": exc.message, "retry_after": exc.retry_after_s}
    else:
        message = {"type": "error", "message": exc.message, "code": exc.code}
        if exc.retry_after_s is not None:
            message["retry_after"] = exc.retry_after_s
    code = CLOSE_CODES.get(type(exc), CLOSE_TRY_AGAIN_LATER)
    try:
        await websocket.send_json(message)
        await websocket.close(code, reason=exc.code)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the guest left before hearing why


async def _converse(websocket: WebSocket, service: QueueService, ticket: Ticket) -> bool:
    """Send events until the terminal one, while listening for a cancel or a disconnect.
    True if the guest stopped reading (a send waited GUEST_SEND_TIMEOUT_SEC)."""
    sender = asyncio.ensure_future(_send_events(websocket, ticket, service.settings.send_timeout_s))
    listener = asyncio.ensure_future(_listen(websocket, service, ticket))
    try:
        await asyncio.wait([sender, listener], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, listener):
            task.cancel()
        results = await asyncio.gather(sender, listener, return_exceptions=True)
    if sender.done() and not sender.cancelled() and sender.exception() is None:
        try:
            await websocket.close(CLOSE_NORMAL)
        except (WebSocketDisconnect, RuntimeError):
            pass
    stuck = any(isinstance(result, TimeoutError) for result in results)
    if stuck:
        logger.info(
            "request %s: the guest took no WebSocket message for %gs; let go",
            ticket.id,
            service.settings.send_timeout_s,
        )
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, WebSocketDisconnect | OSError | TimeoutError):
            logger.warning("websocket for request %s ended with %r", ticket.id, result)
    return stuck


async def _send_events(websocket: WebSocket, ticket: Ticket, send_timeout_s: float) -> None:
    # The same reading of the event log as guestqueue.stream.TicketStream.
    seen = 0
    log = ticket.events
    while True:
        for event in log.after(seen):
            # A guest that stops reading would pin this task (and its place) until GUEST_MAX_WAIT_SEC:
            # it is let go like an SSE guest whose send timed out.
            async with asyncio.timeout(send_timeout_s):
                await websocket.send_json(to_message(event, ticket.id))
            seen = event.id
            if event.terminal or event.name == RECONNECT:  # over, or to be followed elsewhere
                return
        if log.closed:
            return
        await log.wait_after(seen)


async def _listen(websocket: WebSocket, service: QueueService, ticket: Ticket) -> None:
    """Return when the guest disconnects; a ``{"type": "cancel"}`` message leaves the line."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            data = json.loads(message.get("text") or "null")
        except (ValueError, RecursionError):
            continue  # the question has been asked; anything but a cancel is ignored
        if isinstance(data, dict) and data.get("type") == "cancel":
            service.cancel(ticket, Status.CANCELLED, "cancelled", "The request was cancelled.")


def to_message(event: Event, request_id: str) -> dict[str, Any]:
    """One event of the log as a WebSocket message (the table in the module docstring)."""
    data = event.data
    if event.name == QUEUED:
        return {
            "type": "queue_position",
            "request_id": request_id,
            "position": data["queue_position"],
            "total_ahead": data["total_ahead"],
            "queue_size": data["queue_size"],
            "estimated_wait_sec": data["estimated_wait_sec"],
            "estimated_wait_range_sec": data.get("estimated_wait_range_sec"),
        }
    if event.name == PROCESSING:
        return {"type": "processing", "request_id": request_id}
    if event.name == ANSWER_CHUNK:
        return {"type": "answer_chunk", "request_id": request_id, "data": data}
    if event.name == WORKFLOW_COMPLETE:
        return {"type": "result", "request_id": request_id, "data": data}
    if event.name == TIMEOUT:
        return {
            "type": "error",
            "request_id": request_id,
            "message": data["error"],
            "code": data.get("code", "timeout"),
            "fallback": data["fallback"],
        }
    if event.name == ERROR:
        return {"type": "error", "request_id": request_id, "message": data["error"], "code": data["code"]}
    return {"type": event.name, "request_id": request_id, "data": data}
