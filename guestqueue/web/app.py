"""The HTTP API (DESIGN.md) as a Starlette app, and the lifespan that runs the queue.

Run it alone (``guestqueue serve``) or mount it in your own app::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from guestqueue import GuestQueue, Settings

    guest = GuestQueue(Settings(max_concurrent_requests=2), workflow=my_workflow)
    app = Starlette(routes=[Mount("/api/v1/guest", app=guest.app)], lifespan=guest.lifespan)

Mounted apps' lifespans are not run by Starlette, hence ``lifespan=guest.lifespan``
on the outer app (FastAPI takes the same argument).

Named lines (``GUEST_CONFIG``, linespec.py) are served by ``guest.lines_app``
under ``/api/v1/lines``: ``GET /api/v1/lines`` lists them and each has the full
API under ``/api/v1/lines/{line}/``. ``guest.app`` serves the ``guest`` line,
and the process-wide views (health and metrics of every line, the pages).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ..catalog import Catalog, Principal
from ..catalogstore import CatalogStore
from ..config import Settings, SettingsError
from ..errors import NotFound, Rejected, ShuttingDown, StartupError
from ..linespec import DEFAULT_LINE, LineSpec, load_lines, parse_line
from ..lineup import Lineup
from ..runtime import Queue, open_redis
from ..service import QueueService
from ..store import LogUnavailable, RequestLog
from ..tickets import Status, Ticket
from ..upstream import Workflow, make_http_client
from .access import Access, PeerRecorder
from .admin import AdminApi
from .admission import client_key, read_chat_request
from .monitor import StatusMonitor
from .pages import page_routes
from .stream import TicketStream
from .websocket import serve_websocket

API_PREFIX = "/api/v1/guest"
LINES_PREFIX = "/api/v1/lines"
ADMIN_PREFIX = "/api/v1/admin"
logger = logging.getLogger("guestqueue.web")


class GuestQueue:
    """guestqueue's API and the lines behind it. State is created in :meth:`lifespan`."""

    def __init__(self, settings: Settings | None = None, *, workflow: Workflow | None = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.specs = load_lines(self.settings.config, self.settings)  # a bad file fails here, at start-up
        self.workflow = workflow
        self.lineup: Lineup | None = None
        self.monitors: dict[str, StatusMonitor] = {}
        self.access = Access(self.settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.app = Starlette(
            routes=self._routes(),
            middleware=self._middleware(),
            exception_handlers=EXCEPTION_HANDLERS,
            lifespan=self.lifespan,
        )
        self.app.state.guestqueue = self
        self.lines_app = Starlette(
            routes=[
                Route("/", self.list_lines, methods=["GET"]),
                Mount("/{line}", routes=[
                    *self._line_routes(), Route("/metrics", self.line_metrics, methods=["GET"]), *page_routes(),
                ]),
            ],
            middleware=self._middleware(),
            exception_handlers=EXCEPTION_HANDLERS,
        )
        self.lines_app.state.guestqueue = self
        self.store: CatalogStore | None = None
        self.admin = AdminApi(self.settings, self.access, self.specs, self._sync_lines)
        self.admin_app = Starlette(
            routes=self.admin.routes(), middleware=self._middleware(), exception_handlers=EXCEPTION_HANDLERS,
        )

    def __repr__(self) -> str:
        return f"GuestQueue(lineup={self.lineup!r})"

    @property
    def queue(self) -> Queue | None:
        """The ``guest`` line (the one ``/api/v1/guest`` serves), if it runs."""
        return self.lineup.queues.get(DEFAULT_LINE) if self.lineup is not None else None

    @property
    def service(self) -> QueueService | None:
        queue = self.queue
        return queue.service if queue is not None else None

    @property
    def monitor(self) -> StatusMonitor | None:
        return self.monitors.get(DEFAULT_LINE)

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Open the request log and the shared HTTP (and Redis) clients, start every line; on exit,
        drain them, stop the workers and the monitors, flush the log (the exit stack undoes each
        step in reverse)."""
        settings = self.settings
        async with AsyncExitStack() as stack:
            client = make_http_client(settings)
            stack.push_async_callback(client.aclose)
            log = await self._open_log(stack)
            redis = None
            if settings.redis_url:
                redis = open_redis(settings, lines=len(self.specs))
                stack.push_async_callback(redis.aclose)
            store = CatalogStore(Catalog(), db_path=settings.db_path, redis=redis, prefix=settings.redis_prefix)
            await store.open()
            stack.push_async_callback(store.close)
            lineup = Lineup(client=client, log=log, redis=redis, workflow=self.workflow)
            lineup.on_open.append(self._start_monitor)
            stack.push_async_callback(lineup.aclose)
            for spec in self._desired(store.catalog).values():
                await lineup.open(spec)
            self.lineup, self.store = lineup, store
            self.admin.lineup, self.admin.store = lineup, store
            store.on_change.append(self._sync_lines)
            self._loop = asyncio.get_running_loop()
            stack.callback(self._forget)
            yield

    async def _start_monitor(self, queue: Queue, stack: AsyncExitStack) -> None:
        settings = self.settings
        monitor = StatusMonitor(queue.views, ping_s=settings.ping_s, send_timeout_s=settings.send_timeout_s)
        monitor.start()
        self.monitors[queue.name] = monitor
        stack.push_async_callback(monitor.stop)
        stack.callback(self.monitors.pop, queue.name, None)

    async def _open_log(self, stack: AsyncExitStack) -> RequestLog | None:
        settings = self.settings
        if not settings.db_path:
            return None
        log = RequestLog(
            settings.db_path, buffer_rows=settings.log_buffer_rows, retention_days=settings.log_retention_days,
            instance_ttl_s=settings.instance_ttl_s,
        )
        try:
            await log.open()
        except LogUnavailable as exc:  # open() left nothing open
            raise StartupError(f"GUEST_DB_PATH={settings.db_path!r}: {exc}") from None
        stack.push_async_callback(log.close)
        return log

    def _forget(self) -> None:
        self.lineup = self.store = self.admin.lineup = self.admin.store = None

    def _desired(self, catalog: Catalog) -> dict[str, LineSpec]:
        """The lines there should be: the file's, with the catalog's (made or changed at run time) on top."""
        specs = dict(self.specs)
        for name, stored in catalog.lines.items():
            try:
                specs[name] = parse_line(name, stored, self.settings, where=f"stored line {name!r}")
            except SettingsError as exc:  # e.g. stored under other GUEST_* settings: the rest still run
                logger.error("%s; the line is not served", exc)
        return specs

    async def _sync_lines(self) -> None:
        if self.lineup is not None and self.store is not None:
            await self.lineup.sync(self._desired(self.store.catalog))

    @property
    def catalog(self) -> Catalog:
        if self.store is None:
            raise ShuttingDown("guestqueue is not running (was its lifespan started?).")
        return self.store.catalog

    async def drain(self) -> None:
        """Begin a graceful shutdown (see :meth:`request_shutdown`) and wait until it is over:
        every guest of every line has had its terminal event. ``guestqueue serve`` awaits it on
        SIGTERM, still listening (so new guests hear 503 ``shutting_down``), before uvicorn stops."""
        if self.lineup is not None:
            await self.lineup.drain()

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown: refuse new guests, finish running work, end the rest.

        Safe to call from a signal handler or another thread.
        """
        lineup, loop = self.lineup, self._loop
        if lineup is not None and loop is not None:
            loop.call_soon_threadsafe(lineup.begin_shutdown)

    def _routes(self) -> list[BaseRoute]:
        return [
            *self._line_routes(),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/", self.index, methods=["GET"]),
            *page_routes(),
        ]

    def _line_routes(self) -> list[BaseRoute]:
        """One line's API: the ``guest`` line's under /api/v1/guest, any line's under /api/v1/lines/{line}."""
        return [
            Route("/chat", self.chat, methods=["POST"]),
            Route("/chat/simple", self.chat_simple, methods=["POST"]),
            Route("/chat/{request_id}/events", self.chat_events, methods=["GET"]),
            Route("/chat/{request_id}", self.chat_cancel, methods=["DELETE"]),
            Route("/chat/{name}", self.no_such_chat_endpoint, methods=["POST"]),
            Route("/queue/status", self.queue_status, methods=["GET"]),
            Route("/queue/status/stream", self.queue_status_stream, methods=["GET"]),
            Route("/queue/status/samples", self.queue_status_samples, methods=["GET"]),
            Route("/queue/request/{request_id}", self.queue_request, methods=["GET"]),
            Route("/queue/history", self.queue_history, methods=["GET"]),
            WebSocketRoute("/ws", self.websocket),
        ]

    def _middleware(self) -> list[Middleware]:
        # Outermost: the TCP peer, before proxy headers replace scope["client"] (access.py's local rule).
        middleware = [Middleware(PeerRecorder)]
        if self.settings.trusted_proxies:
            # The client key (per-client limits, the log) is the peer address, or the
            # X-Forwarded-For address when, and only when, the peer is a trusted proxy.
            middleware.append(Middleware(ProxyHeadersMiddleware, trusted_hosts=self.settings.trusted_proxies))
        origins = self.settings.cors_origin_list
        if origins:
            middleware.append(Middleware(
                CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Content-Type", "Last-Event-ID", "X-API-Key", "Idempotency-Key"],
                expose_headers=["X-Request-ID", "Retry-After"],
            ))
        return middleware

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
        """The caller, if it may do ``permission`` on the request's line. Without a key, the
        operator's rule (the admin key, or a local caller while none is set) answers as before lines."""
        spec = self._queue(request).spec
        principal = self.access.principal(request, self.catalog)
        if principal.may(permission, spec.name, spec.application_id):
            return principal
        if principal.role == "anonymous":
            self.access.require_operator(request)  # raises: 401 (no key) or 403 (not local)
        return self.access.require(request, self.catalog, permission, spec.name, spec.application_id)

    def _require_status_reader(self, request: Request) -> None:
        if not (self.settings.public_status and self._queue(request).spec.public):
            self._require(request, "READ")

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
        client = client_key(request)
        known = service.registry.by_key(client, body.idempotency_key) if body.idempotency_key else None
        ticket = await service.submit(
            body.query, client=client, parameters=body.parameters, session_id=body.session_id,
            idempotency_key=body.idempotency_key, tier=self._tier(request, asker),
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

    async def chat_cancel(self, request: Request) -> Response:
        service = self._service(request)
        spec = self._queue(request).spec
        if not spec.public:  # on a public line the request's id is permission enough
            principal = self.access.principal(request, self.catalog)
            if not principal.may("DELETE", spec.name, spec.application_id):
                self._require(request, "WRITE")
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
            "POST /chat/simple (one JSON answer), with a JSON body {\"query\": \"...\"}."
        )

    async def chat_simple(self, request: Request) -> Response:
        service = self._service(request)
        ticket, _ = await self._admit(request)
        service.subscribe(ticket)
        try:
            finished = await _until_done_or_disconnect(ticket, request)
        finally:
            service.unsubscribe(ticket)
        if ticket.moved:
            # This instance is stopping (or another took the request over): the place is kept in
            # the shared line; asking again with the same Idempotency-Key, or following the events,
            # on any instance picks it up.
            return JSONResponse({
                "error": "The service is restarting. Ask again (send the same Idempotency-Key to keep your "
                         "place) or follow GET /chat/{request_id}/events.",
                "code": "reconnect", "request_id": ticket.id, "retry_after": 1,
            }, status_code=503, headers={"Retry-After": "1"})
        if not finished:
            return Response(status_code=204)  # nobody is listening any more
        return _simple_answer(ticket)

    async def websocket(self, websocket: WebSocket) -> None:
        queue = self.lineup.queues.get(line_name(websocket)) if self.lineup is not None else None
        if queue is None:
            # 1013 "try again later" while stopping; 1008 (policy) for a line that does not exist.
            await websocket.close(1013 if self.lineup is None else 1008,
                                  reason="shutting_down" if self.lineup is None else "unknown_line")
            return
        try:
            asker = self._asker(websocket)
        except Rejected as exc:
            await websocket.close(1008, reason=exc.code)
            return
        await serve_websocket(websocket, queue.service, tier=self._tier(websocket, asker))

    # -- status --------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return JSONResponse(links(request.scope.get("root_path", "")))

    async def list_lines(self, request: Request) -> Response:
        """``GET /api/v1/lines``: the lines the caller may see (the public ones, and those its key
        has a permission on), with their mode and size."""
        principal = self.access.principal(request, self.catalog)
        lines = []
        for queue in sorted(self._lineup, key=lambda queue: queue.name):
            spec = queue.spec
            if not (spec.public or principal.granted(spec.name, spec.application_id)):
                continue
            view = queue.service.line.peek()
            lines.append({
                "name": queue.name, "mode": queue.service.gate.mode(), "public": queue.spec.public,
                "upstream": queue.service.upstream_kind, "queue_size": view.size, "active_requests": view.active,
                "url": f"{request.url.path.rstrip('/')}/{queue.name}",
            })
        return JSONResponse({"lines": lines})

    async def queue_status(self, request: Request) -> Response:
        self._require_status_reader(request)
        return JSONResponse(await self._queue(request).views.status())

    async def queue_status_stream(self, request: Request) -> Response:
        self._require_status_reader(request)
        return self._monitor(request).stream()

    async def queue_status_samples(self, request: Request) -> Response:
        self._require_status_reader(request)
        return JSONResponse(self._monitor(request).samples())

    def _monitor(self, request: Request) -> StatusMonitor:
        monitor = self.monitors.get(self._queue(request).name)
        if monitor is None:
            raise ShuttingDown("guestqueue is not running (was its lifespan started?).")
        return monitor

    async def queue_request(self, request: Request) -> Response:
        # The id is its guest's credential (access.py): holding it is permission enough.
        found = await self._queue(request).views.lookup(request.path_params["request_id"])  # or another instance's
        if found is None:
            raise NotFound("No request with that id (it may have expired).")
        return JSONResponse(found)

    async def queue_history(self, request: Request) -> Response:
        self._require(request, "READ")  # it lists request ids: operators and READ keys only
        return JSONResponse(await self._queue(request).views.history())

    async def line_metrics(self, request: Request) -> Response:
        """One line's metrics (READ)."""
        self._require(request, "READ")
        queue = self._queue(request)
        await queue.refresh()
        body, content_type = self._lineup.metrics.render(queue.name)
        return Response(body, media_type=content_type)

    async def metrics(self, request: Request) -> Response:
        """Every line's metrics (labelled ``line``) and the request log's."""
        self.access.require_operator(request)
        lineup = self._lineup
        for queue in lineup:
            await queue.refresh()  # the line now, and every instance's totals
        body, content_type = lineup.metrics.render()
        return Response(body, media_type=content_type)

    async def health(self, request: Request) -> Response:
        """The worst of every line's health; with the ``guest`` line's fields at the top (as before
        lines) and each line's under ``lines``."""
        if self.lineup is None:
            return JSONResponse({"status": "unavailable", "problems": ["not running"]}, status_code=503)
        lines = {}
        for queue in self.lineup:
            _, lines[queue.name] = await queue.views.health()
        worst = max((line["status"] for line in lines.values()), key=HEALTH_ORDER.index, default="ok")
        main = lines.get(DEFAULT_LINE) or {
            "queue_size": sum(line["queue_size"] for line in lines.values()),
            "active_requests": sum(line["active_requests"] for line in lines.values()),
        }
        problems = [
            problem if name == DEFAULT_LINE else f"line {name}: {problem}"
            for name, line in lines.items() for problem in line["problems"]
        ]
        body = {**main, "status": worst, "problems": problems, "lines": lines}
        return JSONResponse(body, status_code=503 if worst == "unavailable" else 200)


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


async def _until_done_or_disconnect(ticket: Ticket, request: Request) -> bool:
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


SIMPLE_STATUS = {"timeout": 504, "wait_timeout": 504, "cancelled": 409, "shutdown": 503, "internal_error": 500}


def _simple_answer(ticket: Ticket) -> Response:
    if ticket.status is Status.COMPLETED:
        return JSONResponse({
            "request_id": ticket.id, "answer": ticket.answer, "suggested_questions": ticket.suggested_questions,
            "cached": ticket.cached, "wait_ms": round(ticket.wait_ms or 0.0, 1),
            "duration_ms": round(ticket.duration_ms or 0.0, 1),
        })
    terminal = ticket.events.terminal_event()
    body = dict(terminal.data) if terminal is not None else {"request_id": ticket.id, "error": ticket.error}
    code = str(body.setdefault("code", ticket.error_code or "timeout"))
    return JSONResponse(body, status_code=SIMPLE_STATUS.get(code, 502))


HEALTH_ORDER = ("ok", "degraded", "unavailable")


def line_name(connection: HTTPConnection) -> str:
    """The line a request's path names; /api/v1/guest/... names none: the ``guest`` line."""
    return str(connection.path_params.get("line", DEFAULT_LINE))


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
        status_code=exc.status_code, headers=exc.headers,
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "Something went wrong on our side.", "code": "internal_error"}, status_code=500)


EXCEPTION_HANDLERS: dict[Any, Any] = {Rejected: _rejected, HTTPException: _http_error, Exception: _internal_error}


def links(prefix: str) -> dict[str, str]:
    """Where things are, for ``GET /`` and ``GET /api/v1/guest/``."""
    return {
        "service": "guestqueue", "api": prefix, "chat_page": f"{prefix}/static/chat.html",
        "dashboard": f"{prefix}/dashboard", "ask": f"POST {prefix}/chat", "status": f"{prefix}/queue/status",
        "health": f"{prefix}/health",
    }


def create_app(settings: Settings | None = None, *, workflow: Workflow | None = None) -> Starlette:
    """A standalone app serving the API under ``/api/v1/guest``."""
    guest = GuestQueue(settings, workflow=workflow)

    async def index(request: Request) -> Response:
        return JSONResponse(links(API_PREFIX))

    app = Starlette(
        routes=[
            Route("/", index), Route(LINES_PREFIX, guest.list_lines), Mount(LINES_PREFIX, app=guest.lines_app),
            Mount(ADMIN_PREFIX, app=guest.admin_app), Mount(API_PREFIX, app=guest.app),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=guest.lifespan,
    )
    app.state.guestqueue = guest
    return app
