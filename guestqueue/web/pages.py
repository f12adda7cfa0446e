"""What a browser loads: the client module, the guest chat page and the live status page.

Served from the package's ``static`` directory (shipped as package data), so a
plain ``pip install`` serves them too: ``/static/guestqueue.js`` (the client),
``/static/chat.html`` (the guest page, also at ``examples/chat.html``) and
``/dashboard`` (queue size, active requests, outcomes, queue length over time).

Every file goes out with ``X-Content-Type-Options: nosniff``, ``X-Frame-Options:
DENY`` and ``Referrer-Policy: no-referrer``. The two pages also get a strict
``Content-Security-Policy``: scripts and styles only from this origin or the
page's own inline blocks, allowed by their SHA-256 hashes (computed here from
the files, so a page stays one self-contained file you can copy, and nothing
injected into it would run), no framing, no plugins, requests only to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).with_name("static")
PAGES = ("chat.html", "dashboard.html")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_INLINE = re.compile(r"<(script|style)\b[^>]*>(.*?)</\1>", re.S | re.I)


def content_security_policy(html: str) -> str:
    """A policy allowing exactly this page's inline ``<script>`` and ``<style>`` blocks."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(html):
        if not body:
            continue  # a <script src=...>: allowed as 'self', and nothing inline to allow
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[tag.lower()].append(f"'sha256-{digest}'")
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {' '.join(hashes['script'])}".rstrip(),
            f"style-src 'self' {' '.join(hashes['style'])}".rstrip(),
            "connect-src 'self'",
            "img-src 'self' data:",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response of the wrapped app (the static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._raw = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self._raw]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page(name: str) -> Route:
    path = STATIC_DIR / name
    headers = {
        **SECURITY_HEADERS,
        "Content-Security-Policy": content_security_policy(path.read_text()),
        "Cache-Control": "no-cache",
    }

    async def page(request: Request) -> Response:
        return FileResponse(path, headers=headers)

    # The dashboard is served at /dashboard rather than under /static so that its relative
    # URLs (queue/status, static/...) resolve inside the API prefix wherever it is mounted.
    url = "/dashboard" if name == "dashboard.html" else f"/static/{name}"
    return Route(url, page, methods=["GET", "HEAD"])


def page_routes() -> list[BaseRoute]:
    return [
        *(_page(name) for name in PAGES),  # before the Mount, which would serve chat.html without its policy
        Mount("/static", app=_SecurityHeaders(StaticFiles(directory=STATIC_DIR)), name="static"),
    ]
