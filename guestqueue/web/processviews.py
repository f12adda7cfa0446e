"""The process-wide views, under the ``guest`` line's prefix: ``GET /`` (where things are),
``GET /health`` (the worst of every line's health, the ``guest`` line's fields at the top) and
``GET /metrics`` (every line's metrics and the request log's, for the operator).
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import ShuttingDown
from ..linespec import DEFAULT_LINE
from ..lineup import Lineup
from .access import Access

HEALTH_ORDER = ("ok", "degraded", "unavailable")


class RunningApp(Protocol):
    """What these views read from the running app (GuestQueue)."""

    access: Access
    lineup: Lineup | None


class ProcessViews:
    def __init__(self, app: RunningApp) -> None:
        self._app = app

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/", self.index, methods=["GET"]),
        ]

    async def index(self, request: Request) -> Response:
        return JSONResponse(links(request.scope.get("root_path", "")))

    @property
    def _lineup(self) -> Lineup:
        if self._app.lineup is None:
            raise ShuttingDown("guestqueue is not running (was its lifespan started?).")
        return self._app.lineup

    async def metrics(self, request: Request) -> Response:
        """Every line's metrics (labelled ``line``) and the request log's."""
        self._app.access.require_operator(request)
        lineup = self._lineup
        for queue in lineup:
            await queue.refresh()  # the line now, and every instance's totals
        body, content_type = lineup.metrics.render()
        return Response(body, media_type=content_type)

    async def health(self, request: Request) -> Response:
        """The worst of every line's health; with the ``guest`` line's fields at the top (as before
        lines) and each line's under ``lines``."""
        app = self._app
        if app.lineup is None:
            return JSONResponse({"status": "unavailable", "problems": ["not running"]}, status_code=503)
        lines = {}
        for queue in app.lineup:
            _, lines[queue.name] = await queue.views.health()
        worst = max((line["status"] for line in lines.values()), key=HEALTH_ORDER.index, default="ok")
        main = lines.get(DEFAULT_LINE) or {
            "queue_size": sum(line["queue_size"] for line in lines.values()),
            "active_requests": sum(line["active_requests"] for line in lines.values()),
        }
        problems = [
            problem if name == DEFAULT_LINE else f"line {name}: {problem}"
            for name, line in lines.items()
            for problem in line["problems"]
        ]
        problems += [f"line {name} is not served: {why}" for name, why in sorted(app.lineup.problems.items())]
        if app.lineup.problems and worst == "ok":
            worst = "degraded"
        body = {**main, "status": worst, "problems": problems, "lines": lines}
        return JSONResponse(body, status_code=503 if worst == "unavailable" else 200)


def links(prefix: str) -> dict[str, str]:
    """Where things are, for ``GET /`` and ``GET /api/v1/guest/``."""
    return {
        "service": "guestqueue",
        "api": prefix,
        "chat_page": f"{prefix}/static/chat.html",
        "dashboard": f"{prefix}/dashboard",
        "ask": f"POST {prefix}/chat",
        "status": f"{prefix}/queue/status",
        "health": f"{prefix}/health",
    }
