"""One line's API, the same for the ``guest`` line (``/api/v1/guest``) and every named line
(``/api/v1/lines/{line}``): asking, following, cancelling, and the line's status views
(linestatus.py), with each line's permissions (tenancy/catalog.py) checked before anything is read.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..config import Settings
from ..errors import NotFound, Rejected, ShuttingDown
from ..linespec import DEFAULT_LINE
from ..lineup import Lineup
from ..runtime import Queue
from ..service import QueueService
from ..tenancy.catalog import Catalog, Principal
from ..tickets import Status, Ticket
from .access import Access
from .admission import asker_key, client_key, read_chat_request, share_key
from .jobs import JobsApi
from .linestatus import LineStatus
from .monitor import StatusMonitor
from .stream import TicketStream
from .waitingroom import WaitingRoom
from .websocket import serve_websocket


class LinesHost(Protocol):
    """What the line API reads from the running app (GuestQueue)."""

    settings: Settings
    access: Access
    lineup: Lineup | None
    monitors: dict[str, StatusMonitor]

    @property
    def catalog(self) -> Catalog: ...


class LineApi:
    """The handlers of one line's API; the line is the request's ``{line}`` (else ``guest``)."""

    def __init__(self, host: LinesHost) -> None:
        self._host = host
        self.status = LineStatus(self)  # the line's views, and the list of lines

    @property
    def settings(self) -> Settings:
        return self._host.settings

    @property
    def access(self) -> Access:
        return self._host.access

    @property
    def lineup(self) -> Lineup | None:
        return self._host.lineup

    @property
    def catalog(self) -> Catalog:
        return self._host.catalog

    @property
    def monitors(self) -> dict[str, StatusMonitor]:
        return self._host.monitors

    def routes(self) -> list[BaseRoute]:
        """One line's API: the ``guest`` line's under /api/v1/guest, any line's under /api/v1/lines/{line}."""
        return [
            Route("/chat", self.chat, methods=["POST"]),
            Route("/chat/simple", self.chat_simple, methods=["POST"]),
            Route("/chat/{request_id}/events", self.chat_events, methods=["GET"]),
            Route("/chat/{request_id}", self.chat_cancel, methods=["DELETE"]),
            Route("/chat/{name}", self.no_such_chat_endpoint, methods=["POST"]),
            *self.status.routes(),
            WebSocketRoute("/ws", self.websocket),
            *WaitingRoom(self).routes(),  # an admission line's (404 on the others)
            *JobsApi(self).line_routes(),  # a pull line's (404 on the others)
        ]

    @property
    def _lineup(self) -> Lineup:
        if self.lineup is None:
            raise ShuttingDown("guestqueue is not running (was its lifespan started?).")
        return self.lineup

    def _queue(self, request: HTTPConnection) -> Queue:
        """The line the request's path names (``guest`` under /api/v1/guest)."""
        return self._lineup.get(line_name(request))

    def _service(self, request: HTTPConnection) -> QueueService:
        return self._queue(request).service

    def _require(self, request: HTTPConnection, permission: str) -> Principal:
        """The caller, if it may do ``permission`` on the request's line; else 401 (no key) or 403.
        Reading without a key answers as the operator's views did before lines (the admin key, or
        a local caller while none is set)."""
        spec = self._queue(request).spec
        principal = self.access.principal(request, self.catalog)
        if principal.may(permission, spec.name, spec.application_id):
            return principal
        if principal.role == "anonymous" and permission == "READ":
            self.access.require_operator(request)  # the operator's views: 401 (no key) or 403 (not local)
        return self.access.require(request, self.catalog, permission, spec.name, spec.application_id)

    def _asker(self, request: HTTPConnection) -> Principal:
        """Who asks: anyone on a public line (a key, if sent, must be valid: it gives the tier),
        WRITE on the others."""
        if self._queue(request).spec.public:
            return self.access.principal(request, self.catalog)
        return self._require(request, "WRITE")

    def _tier(self, request: HTTPConnection, asker: Principal) -> str | None:
        """The asker's tier counts on lines it may WRITE to (its application's): a key of one
        application buys no priority on another's public line."""
        spec = self._queue(request).spec
        return asker.tier if asker.key is not None and asker.may("WRITE", spec.name, spec.application_id) else None

    async def _admit(self, request: Request) -> tuple[Ticket, bool]:
        """The admitted ticket, and whether it is one this client had already sent (Idempotency-Key)."""
        service = self._service(request)
        asker = self._asker(request)
        body = await read_chat_request(request, service.settings, upstream_kind=service.upstream_kind)
        client = asker_key(request, asker)
        known = service.registry.by_key(client, body.idempotency_key) if body.idempotency_key else None
        ticket = await service.submit(
            body.query,
            client=client,
            parameters=body.parameters,
            session_id=body.session_id,
            idempotency_key=body.idempotency_key,
            max_wait_s=body.max_wait_s,
            tier=self._tier(request, asker),
            share=share_key(request, asker),
        )
        return ticket, ticket is known

    # -- chat ----------------------------------------------------------------------

    async def chat(self, request: Request) -> Response | TicketStream:
        ticket, again = await self._admit(request)
        # The same question sent again (a client retrying a dropped POST stream): resume it.
        return self._stream(request, ticket, resume=again)

    async def chat_events(self, request: Request) -> Response | TicketStream:
        # With a shared line, a request another instance held is taken over here.
        ticket = await self._service(request).find(request.path_params["request_id"], _last_event_id(request))
        if ticket is None:
            raise NotFound("No request with that id (it may have expired).")
        return self._stream(request, ticket, resume=True)

    def _stream(self, request: Request, ticket: Ticket, *, resume: bool) -> Response | TicketStream:
        last_event_id = _last_event_id(request) if resume else 0
        if ticket.done and last_event_id >= ticket.events.last_id:
            # Everything was seen: 204 tells an EventSource to stop reconnecting (the SSE spec's way).
            return Response(status_code=204, headers={"X-Request-ID": ticket.id})
        return TicketStream(self._service(request), ticket, last_event_id, client=client_key(request), resume=resume)

    def _may_end(self, request: Request) -> None:
        """Ending a guest's request (or an admission session) by its id: on a public line the id is
        permission enough; on a private one, DELETE or WRITE."""
        spec = self._queue(request).spec
        if not spec.public:
            principal = self.access.principal(request, self.catalog)
            if not principal.may("DELETE", spec.name, spec.application_id):
                self._require(request, "WRITE")

    async def chat_cancel(self, request: Request) -> Response:
        service = self._service(request)
        self._may_end(request)
        ticket = await service.find(request.path_params["request_id"])  # held here or elsewhere
        if ticket is None:
            raise NotFound("No request with that id (it may have expired).")
        cancelled = service.cancel(ticket, Status.CANCELLED, "cancelled", "The request was cancelled.")
        await service.settled()  # every instance knows it before the guest does
        if not cancelled:
            return JSONResponse(
                {"error": "The request had already finished.", "code": "already_finished", **ticket.summary()},
                status_code=409,
            )
        return JSONResponse({"request_id": ticket.id, "status": "cancelled"})

    async def no_such_chat_endpoint(self, request: Request) -> Response:
        # e.g. an OpenAI client pointed here: POST /chat/completions would otherwise be a 405 of the
        # DELETE /chat/{request_id} route, which says nothing useful.
        raise NotFound(
            f"There is no POST /chat/{request.path_params['name']}. Ask with POST /chat (an SSE stream) or "
            'POST /chat/simple (one JSON answer), with a JSON body {"query": "..."}.'
        )

    async def chat_simple(self, request: Request) -> Response:
        service = self._service(request)
        ticket, _ = await self._admit(request)
        service.subscribe(ticket)
        try:
            finished = await until_done_or_disconnect(ticket, request)
        finally:
            service.unsubscribe(ticket)
        if ticket.moved:
            # This instance is stopping (or another took the request over): the place is kept in
            # the shared line; asking again with the same Idempotency-Key, or following the events,
            # on any instance picks it up.
            return JSONResponse(
                {
                    "error": "The service is restarting. Ask again (send the same Idempotency-Key to keep your "
                    "place) or follow GET /chat/{request_id}/events.",
                    "code": "reconnect",
                    "request_id": ticket.id,
                    "retry_after": 1,
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
        if not finished:
            return Response(status_code=204)  # nobody is listening any more
        return _simple_answer(ticket)

    async def websocket(self, websocket: WebSocket) -> None:
        queue = self.lineup.queues.get(line_name(websocket)) if self.lineup is not None else None
        if queue is None:
            # 1013 "try again later" while stopping; 1008 (policy) for a line that does not exist.
            await websocket.close(
                1013 if self.lineup is None else 1008, reason="shutting_down" if self.lineup is None else "unknown_line"
            )
            return
        try:
            asker = self._asker(websocket)
        except Rejected as exc:
            await websocket.close(1008, reason=exc.code)
            return
        await serve_websocket(
            websocket, queue.service, tier=self._tier(websocket, asker), share=share_key(websocket, asker)
        )


MAX_LAST_EVENT_ID_CHARS = 20  # event ids are counters: 20 digits is more than any stream reaches


def _last_event_id(request: Request) -> int:
    """The guest's last seen event id; anything else (empty, not digits, too long) is ignored: 0."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    raw = raw.strip()
    # isdigit() alone accepts "²" and other digits int() refuses (a 500): ASCII digits only. The
    # length cap keeps int() under Python's 4 300-digit limit (a ValueError, hence a 500).
    if len(raw) > MAX_LAST_EVENT_ID_CHARS or not (raw.isascii() and raw.isdigit()):
        return 0
    return int(raw)


async def until_done_or_disconnect(ticket: Ticket, request: Request) -> bool:
    """Wait for the ticket's end (or its hand-off to another instance); False if the client went
    away first."""

    async def ended() -> None:
        while not ticket.done and not ticket.moved:
            await ticket.events.wait_after(ticket.events.last_id)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    waiters = [asyncio.ensure_future(ended()), asyncio.ensure_future(disconnected())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return ticket.done or ticket.moved


SIMPLE_STATUS = {
    "timeout": 504,
    "wait_timeout": 504,
    "deadline": 504,
    "cancelled": 409,
    "shutdown": 503,
    "internal_error": 500,
}


def _simple_answer(ticket: Ticket) -> Response:
    if ticket.status is Status.COMPLETED:
        return JSONResponse(
            {
                "request_id": ticket.id,
                "answer": ticket.answer,
                "suggested_questions": ticket.suggested_questions,
                "cached": ticket.cached,
                "wait_ms": round(ticket.wait_ms or 0.0, 1),
                "duration_ms": round(ticket.duration_ms or 0.0, 1),
            }
        )
    terminal = ticket.events.terminal_event()
    body = dict(terminal.data) if terminal is not None else {"request_id": ticket.id, "error": ticket.error}
    code = str(body.setdefault("code", ticket.error_code or "timeout"))
    return JSONResponse(body, status_code=SIMPLE_STATUS.get(code, 502))


def line_name(connection: HTTPConnection) -> str:
    """The line a request's path names; /api/v1/guest/... names none: the ``guest`` line."""
    return str(connection.path_params.get("line", DEFAULT_LINE))
