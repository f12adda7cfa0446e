"""An admission line's own routes (waitingroom/sessions.py): join, poll, verify and revoke tokens, end sessions.

Under ``/api/v1/lines/{line}/``:

- ``POST join`` (optional JSON body ``{session_id?, parameters?, idempotency_key?}``): with
  ``Accept: text/event-stream`` the same SSE stream as ``chat`` (``queued`` … ``admitted``);
  otherwise 202 and the polling form below. ``chat`` and the WebSocket work too.
- ``GET join/{id}``: ``{status, queue_position, estimated_wait_sec, estimated_wait_range_sec,
  poll_after_sec}``, and once admitted the ``admitted`` event's fields (``token``, ``expires_at``,
  ``redirect_url``). A guest that neither polls nor streams for ``POLL_GRACE_S`` leaves the line.
- ``POST tokens/verify`` (READ): ``{"token": ...}`` → ``{"valid": true, "claims"}`` or
  ``{"valid": false, "reason"}`` (as OAuth token introspection answers an inactive token).
- ``DELETE tokens/{jti}`` (WRITE): revokes the token and frees its session's slot.
- ``POST sessions/{id}/complete`` or ``DELETE sessions/{id}``: the guest is done, its slot frees
  at once (the id is the guest's credential, as for ``DELETE chat/{id}``; WRITE on a private line).
- ``GET tokens/jwks``: the public key (RS256/ES256) for checking tokens offline.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import InvalidField, NotFound
from ..runtime import Queue
from ..tenancy.catalog import Principal
from ..tickets import Status, Ticket
from ..waitingroom.sessions import Sessions
from ..waitingroom.tokens import InvalidToken
from .access import Access
from .admission import client_key, read_optional_json, share_key, validate_chat_request
from .stream import TicketStream

POLL_GRACE_S = 30.0  # a polling guest that stops asking for this long leaves the line
MAX_POLL_AFTER_S = 10.0
MAX_TOKEN_CHARS = 8192


class LineRoutes(Protocol):
    """What the line API (lineapi.py) lends these routes."""

    @property
    def access(self) -> Access: ...

    def _queue(self, request: HTTPConnection) -> Queue: ...

    def _require(self, request: HTTPConnection, permission: str) -> Principal: ...

    def _asker(self, request: HTTPConnection) -> Principal: ...

    def _tier(self, request: HTTPConnection, asker: Principal) -> str | None: ...

    def _stream(self, request: Request, ticket: Ticket, *, resume: bool) -> Response | TicketStream: ...

    def _may_end(self, request: Request) -> None: ...


class WaitingRoom:
    def __init__(self, api: LineRoutes) -> None:
        self._api = api

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/join", self.join, methods=["POST"]),
            Route("/join/{request_id}", self.poll, methods=["GET"]),
            Route("/tokens/verify", self.verify, methods=["POST"]),
            Route("/tokens/jwks", self.jwks, methods=["GET"]),
            Route("/tokens/{jti}", self.revoke, methods=["DELETE"]),
            Route("/sessions/{request_id}/complete", self.complete, methods=["POST"]),
            Route("/sessions/{request_id}", self.complete, methods=["DELETE"]),
        ]

    def _room(self, request: HTTPConnection) -> tuple[Queue, Sessions]:
        queue = self._api._queue(request)
        if queue.sessions is None:
            raise NotFound(f'Line {queue.name!r} is not a waiting room (mode "admission"); ask with POST chat.')
        return queue, queue.sessions

    async def join(self, request: Request) -> Response | TicketStream:
        queue, _ = self._room(request)
        service = queue.service
        asker = self._api._asker(request)
        data = await read_optional_json(request, service.settings)
        if (key := request.headers.get("idempotency-key")) is not None:
            data["idempotency_key"] = key
        if data.get("query") is None:
            data["query"] = "join"  # a waiting room asks nothing; the log's query column says so
        body = validate_chat_request(data, service.settings, upstream_kind="admission")
        client = client_key(request)
        known = service.registry.by_key(client, body.idempotency_key) if body.idempotency_key else None
        ticket = await service.submit(
            body.query,
            client=client,
            parameters=body.parameters,
            session_id=body.session_id,
            idempotency_key=body.idempotency_key,
            max_wait_s=body.max_wait_s,
            tier=self._api._tier(request, asker),
            share=share_key(request, asker),
        )
        if "text/event-stream" in request.headers.get("accept", ""):
            return self._api._stream(request, ticket, resume=ticket is known)
        service.polled(ticket, POLL_GRACE_S)
        return JSONResponse(await self._state(queue, ticket), status_code=202)

    async def poll(self, request: Request) -> Response:
        queue, _ = self._room(request)
        service = queue.service
        # The id is the guest's credential; with a shared line, one another instance held is taken over.
        ticket = await service.find(request.path_params["request_id"])
        if ticket is None:
            raise NotFound("No request with that id (it may have expired).")
        service.polled(ticket, POLL_GRACE_S)
        return JSONResponse(await self._state(queue, ticket))

    async def _state(self, queue: Queue, ticket: Ticket) -> dict[str, Any]:
        out: dict[str, Any] = {"request_id": ticket.id, "status": ticket.status.value}
        if ticket.status is Status.QUEUED and ticket.flight is not None:
            view = await queue.service.positions.refresh()
            position = view.position(ticket.flight.id) or ticket.flight.position
            wait_s = queue.service.positions.retry_after_s(max(1, position))
            out.update(
                {
                    "queue_position": position,
                    "estimated_wait_sec": round(wait_s, 1),
                    "estimated_wait_range_sec": [
                        round(s, 1) for s in queue.service.positions.range_s(max(1, position))
                    ],
                    # Often enough to see the line move, never so often that pollers are the load.
                    "poll_after_sec": min(MAX_POLL_AFTER_S, max(1, math.ceil(wait_s / 4))),
                }
            )
        elif ticket.status is Status.PROCESSING:
            out["poll_after_sec"] = 1
        terminal = ticket.events.terminal_event()
        if terminal is not None:
            out.update({k: v for k, v in terminal.data.items() if k != "request_id"})
        return out

    async def verify(self, request: Request) -> Response:
        _, sessions = self._room(request)
        self._api._require(request, "READ")
        data = await read_optional_json(request, self._api._queue(request).service.settings)
        token = data.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidField('Send {"token": "<the guest\'s token>"}.')
        try:
            claims = await sessions.verify(token)
        except InvalidToken as exc:
            return JSONResponse({"valid": False, "reason": str(exc)})
        return JSONResponse({"valid": True, "claims": claims})

    async def jwks(self, request: Request) -> Response:
        _, sessions = self._room(request)
        return JSONResponse(sessions.signer.jwks())

    async def revoke(self, request: Request) -> Response:
        _, sessions = self._room(request)
        self._api._require(request, "WRITE")
        jti = request.path_params["jti"]
        if not await sessions.revoke(jti):
            raise NotFound("No open session has that token id (jti); it may have ended already.")
        return JSONResponse({"jti": jti, "status": "revoked"})

    async def complete(self, request: Request) -> Response:
        _, sessions = self._room(request)
        self._api._may_end(request)
        request_id = request.path_params["request_id"]
        if await sessions.complete(request_id):
            return JSONResponse({"request_id": request_id, "status": "completed"})
        state = await sessions.state(request_id)
        if state is None:
            raise NotFound("No session with that id (the guest may not have been admitted yet).")
        return JSONResponse(
            {
                "error": f"The session had already ended ({state}).",
                "code": "already_finished",
                "request_id": request_id,
                "state": state,
            },
            status_code=409,
        )
