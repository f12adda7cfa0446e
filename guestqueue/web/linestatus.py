"""One line's status views, read-only: its status (once, as a stream, as samples), a request's
place, the recent history and the line's metrics; and ``GET /api/v1/lines``, the lines a caller
may see. Who may read each is checked with the line API's rules (lineapi.py).
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..config import Settings
from ..errors import NotFound, ShuttingDown
from ..lineup import Lineup
from ..runtime import Queue
from ..tenancy.catalog import Catalog, Principal
from .access import Access
from .monitor import StatusMonitor


class LineRoutes(Protocol):
    """What the line API (lineapi.py) lends these views."""

    @property
    def settings(self) -> Settings: ...

    @property
    def access(self) -> Access: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def monitors(self) -> dict[str, StatusMonitor]: ...

    @property
    def _lineup(self) -> Lineup: ...

    def _queue(self, request: HTTPConnection) -> Queue: ...

    def _require(self, request: HTTPConnection, permission: str) -> Principal: ...


class LineStatus:
    def __init__(self, api: LineRoutes) -> None:
        self._api = api

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/queue/status", self.queue_status, methods=["GET"]),
            Route("/queue/status/stream", self.queue_status_stream, methods=["GET"]),
            Route("/queue/status/samples", self.queue_status_samples, methods=["GET"]),
            Route("/queue/request/{request_id}", self.queue_request, methods=["GET"]),
            Route("/queue/history", self.queue_history, methods=["GET"]),
        ]

    def _require_status_reader(self, request: Request) -> None:
        if not (self._api.settings.public_status and self._api._queue(request).spec.public):
            self._api._require(request, "READ")

    async def list_lines(self, request: Request) -> Response:
        """``GET /api/v1/lines``: the lines the caller may see (the public ones, and those its key
        has a permission on), with their mode and size."""
        principal = self._api.access.principal(request, self._api.catalog)
        lines = []
        for queue in sorted(self._api._lineup, key=lambda queue: queue.name):
            spec = queue.spec
            if not (spec.public or principal.granted(spec.name, spec.application_id)):
                continue
            view = queue.service.line.peek()
            lines.append(
                {
                    "name": queue.name,
                    "mode": queue.service.gate.mode(),
                    "public": queue.spec.public,
                    "upstream": queue.service.upstream_kind,
                    "queue_size": view.size,
                    "active_requests": view.active,
                    "url": f"{request.url.path.rstrip('/')}/{queue.name}",
                }
            )
        return JSONResponse({"lines": lines})

    async def queue_status(self, request: Request) -> Response:
        self._require_status_reader(request)
        return JSONResponse(await self._api._queue(request).views.status())

    async def queue_status_stream(self, request: Request) -> Response:
        self._require_status_reader(request)
        return self._monitor(request).stream()

    async def queue_status_samples(self, request: Request) -> Response:
        self._require_status_reader(request)
        return JSONResponse(self._monitor(request).samples())

    def _monitor(self, request: Request) -> StatusMonitor:
        monitor = self._api.monitors.get(self._api._queue(request).name)
        if monitor is None:
            raise ShuttingDown("guestqueue is not running (was its lifespan started?).")
        return monitor

    async def queue_request(self, request: Request) -> Response:
        # The id is its guest's credential (access.py): holding it is permission enough.
        found = await self._api._queue(request).views.lookup(request.path_params["request_id"])  # or another instance's
        if found is None:
            raise NotFound("No request with that id (it may have expired).")
        return JSONResponse(found)

    async def queue_history(self, request: Request) -> Response:
        self._api._require(request, "READ")  # it lists request ids: operators and READ keys only
        return JSONResponse(await self._api._queue(request).views.history())

    async def line_metrics(self, request: Request) -> Response:
        """One line's metrics (READ)."""
        self._api._require(request, "READ")
        queue = self._api._queue(request)
        await queue.refresh()
        body, content_type = self._api._lineup.metrics.render(queue.name)
        return Response(body, media_type=content_type)
