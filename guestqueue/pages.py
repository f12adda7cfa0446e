"""What a browser loads: the client module, the guest chat page and the live status page.

Served from the package's ``static`` directory (shipped as package data), so a
plain ``pip install`` serves them too: ``/static/guestqueue.js`` (the client),
``/static/chat.html`` (the guest page, also at ``examples/chat.html``) and
``/dashboard`` (queue size, active requests, outcomes, queue length over time).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")


async def dashboard(request: Request) -> Response:
    # Served at /dashboard rather than under /static so that its relative URLs
    # (queue/status, static/...) resolve inside the API prefix wherever it is mounted.
    return FileResponse(STATIC_DIR / "dashboard.html", headers={"Cache-Control": "no-cache"})


def page_routes() -> list[BaseRoute]:
    return [
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Route("/dashboard", dashboard, methods=["GET", "HEAD"]),
    ]
