"""The HTTP API (DESIGN.md) as a Starlette app, and the lifespan that runs the queue.

Run it alone (``guestqueue serve``) or mount it in your own app::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from guestqueue import GuestQueue, Settings

    guest = GuestQueue(Settings(max_concurrent_requests=2), workflow=my_workflow)
    app = Starlette(routes=[Mount("/api/v1/guest", app=guest.app)], lifespan=guest.lifespan)

Mounted apps' lifespans are not run by Starlette, hence ``lifespan=guest.lifespan``
on the outer app (FastAPI takes the same argument).

Named lines (``GUEST_CONFIG``, linespec/) are served by ``guest.lines_app``
under ``/api/v1/lines``: ``GET /api/v1/lines`` lists them and each has the full
API under ``/api/v1/lines/{line}/`` (the handlers: lineapi.py). ``guest.app``
serves the ``guest`` line and the process-wide views (health and metrics of
every line: processviews.py; the pages); ``guest.admin_app`` the admin API
(admin/), mounted at ``/api/v1/admin`` by :func:`create_app`. Mount all
three to embed them all. Every app answers errors as errorhandlers.py says (the
OpenAI door's: openai/errors.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ..config import Settings, SettingsError
from ..errors import ShuttingDown, StartupError
from ..linespec import DEFAULT_LINE, LineSpec, load_lines, parse_line
from ..lineup import Lineup
from ..outbound import OutboundPolicy
from ..requestlog import LogUnavailable, RequestLog
from ..runtime import Queue, open_redis
from ..service import QueueService
from ..tenancy.catalog import Catalog
from ..tenancy.store import CatalogStore
from ..upstream import Workflow, make_http_client
from ..webhooks import EventStream, Outbox
from .access import Access, PeerRecorder
from .admin import AdminApi
from .errorhandlers import EXCEPTION_HANDLERS
from .jobs import JobsApi
from .lineapi import LineApi
from .monitor import StatusMonitor
from .openai import OpenAIApi
from .openai.errors import OPENAI_HANDLERS
from .origin import OriginGuard
from .pages import page_routes
from .processviews import ProcessViews, links

API_PREFIX = "/api/v1/guest"
LINES_PREFIX = "/api/v1/lines"
ADMIN_PREFIX = "/api/v1/admin"
JOBS_PREFIX = "/api/v1/jobs"  # a pull worker's reports, by receipt (web/jobs.py)
WEBHOOK_CONNECTIONS = 40  # each webhook client's pool: above the outbox's attempts at once
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
        self.lines = LineApi(self)
        self.app = Starlette(
            routes=self._routes(),
            middleware=self._middleware(),
            exception_handlers=EXCEPTION_HANDLERS,
            lifespan=self.lifespan,
        )
        self.app.state.guestqueue = self
        self.lines_app = Starlette(
            routes=[
                Route("/", self.lines.status.list_lines, methods=["GET"]),
                Mount(
                    "/{line}",
                    routes=[
                        *self.lines.routes(),
                        Route("/metrics", self.lines.status.line_metrics, methods=["GET"]),
                        *page_routes(),
                    ],
                ),
            ],
            middleware=self._middleware(),
            exception_handlers=EXCEPTION_HANDLERS,
        )
        self.lines_app.state.guestqueue = self
        self.store: CatalogStore | None = None
        self.admin = AdminApi(self.settings, self.access, self.specs, self._sync_lines)
        self.openai = OpenAIApi(self.lines)
        self.openai_app = Starlette(
            routes=self.openai.routes(),
            middleware=self._middleware(),
            exception_handlers=OPENAI_HANDLERS,
        )
        self.openai_app.state.guestqueue = self
        self.jobs_app = Starlette(
            routes=JobsApi(self.lines).receipt_routes(),
            middleware=self._middleware(),
            exception_handlers=EXCEPTION_HANDLERS,
        )
        self.admin_app = Starlette(
            routes=self.admin.routes(),
            middleware=self._middleware(),
            exception_handlers=EXCEPTION_HANDLERS,
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
            policy = OutboundPolicy.from_settings(settings)
            guarded = make_http_client(settings, policy)  # for the upstream URLs tenants set
            stack.push_async_callback(guarded.aclose)
            log = await self._open_log(stack)
            redis = None
            if settings.redis_url:
                redis = open_redis(settings, lines=len(self.specs))
                stack.push_async_callback(redis.aclose)
            store = CatalogStore(Catalog(), db_path=settings.db_path, redis=redis, prefix=settings.redis_prefix)
            await store.open()
            stack.push_async_callback(store.close)
            # Webhooks have clients (and connection pools) of their own: a hanging receiver never
            # holds a connection a guest's upstream call needs.
            hooks = make_http_client(settings, connections=WEBHOOK_CONNECTIONS)
            hooks_guarded = make_http_client(settings, policy, connections=WEBHOOK_CONNECTIONS)
            for each in (hooks, hooks_guarded):
                stack.push_async_callback(each.aclose)
            outbox = Outbox(
                db_path=settings.db_path,
                client=hooks,
                backoff_s=settings.webhook_backoff_s,
                redis=redis,
                prefix=settings.redis_prefix,
                guarded=hooks_guarded,
                trusted_urls={hook.url for spec in self.specs.values() for hook in spec.webhooks},
            )
            await outbox.open()
            stack.push_async_callback(outbox.close)
            self.admin.outbox = outbox
            lineup = Lineup(client=client, log=log, redis=redis, workflow=self.workflow, outbox=outbox, guarded=guarded)
            if redis is not None:
                lineup.stream = EventStream(redis, f"{settings.redis_prefix}:events")
                stack.push_async_callback(lineup.stream.close)
            lineup.on_open.append(self._start_monitor)
            stack.push_async_callback(lineup.aclose)
            specs, unusable = self._desired(store.catalog)
            for spec in specs.values():
                if spec.name in store.catalog.lines:  # kept from the admin API: skipped if it cannot open
                    await lineup.open_or_report(spec)
                else:
                    await lineup.open(spec)  # the operator's file: a line that cannot open stops start-up
            lineup.problems.update(unusable)
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
            settings.db_path,
            buffer_rows=settings.log_buffer_rows,
            retention_days=settings.log_retention_days,
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

    def _desired(self, catalog: Catalog) -> tuple[dict[str, LineSpec], dict[str, str]]:
        """The lines there should be: the file's, with the catalog's (made or changed at run time) on
        top; and the kept lines that no longer parse, with why (each logged in one line, shown in
        /health; a file line of the same name runs instead)."""
        specs, unusable = dict(self.specs), {}
        for name, stored in catalog.lines.items():
            try:
                specs[name] = parse_line(
                    name,
                    stored,
                    self.settings,
                    where=f"stored line {name!r}",
                    tenant=True,
                    operator=self.specs.get(name),
                )
            except SettingsError as exc:  # e.g. a bound added since it was kept: the rest still run
                logger.error("%s; the line is not served (fix or delete it through the admin API)", exc)
                unusable[name] = str(exc)
        return specs, unusable

    async def _sync_lines(self) -> None:
        if self.lineup is not None and self.store is not None:
            await self.lineup.sync(*self._desired(self.store.catalog))

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
        return [*self.lines.routes(), *ProcessViews(self).routes(), *page_routes()]

    def _middleware(self) -> list[Middleware]:
        # Outermost: the TCP peer, before proxy headers replace scope["client"] (access.py's local rule).
        middleware = [Middleware(PeerRecorder)]
        if self.settings.trusted_proxies:
            # The client key (per-client limits, the log) is the peer address, or the
            # X-Forwarded-For address when, and only when, the peer is a trusted proxy.
            middleware.append(Middleware(ProxyHeadersMiddleware, trusted_hosts=self.settings.trusted_proxies))
        origins = self.settings.cors_origin_list
        # Every app: a page of another site may not drive a write (origin.py); preflights pass to CORS.
        middleware.append(Middleware(OriginGuard, allowed=origins))
        if origins:
            middleware.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=origins,
                    allow_methods=["GET", "POST", "DELETE"],
                    allow_headers=["Content-Type", "Last-Event-ID", "X-API-Key", "Authorization", "Idempotency-Key"],
                    expose_headers=["X-Request-ID", "Retry-After"],
                )
            )
        return middleware


def create_app(settings: Settings | None = None, *, workflow: Workflow | None = None) -> Starlette:
    """A standalone app serving the API under ``/api/v1/guest``."""
    guest = GuestQueue(settings, workflow=workflow)

    async def index(request: Request) -> Response:
        return JSONResponse(links(API_PREFIX))

    app = Starlette(
        routes=[
            Route("/", index),
            Route(LINES_PREFIX, guest.lines.status.list_lines),
            Mount(LINES_PREFIX, app=guest.lines_app),
            Mount(ADMIN_PREFIX, app=guest.admin_app),
            Mount(JOBS_PREFIX, app=guest.jobs_app),
            Mount(API_PREFIX, app=guest.app),
            *([Mount(guest.settings.openai_prefix, app=guest.openai_app)] if guest.settings.openai_prefix else []),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=guest.lifespan,
    )
    app.state.guestqueue = guest
    return app
