"""Refusing writes that a browser sends for a page of another site.

With no ``GUEST_ADMIN_API_KEY`` a local caller is the super admin (access.py), and
a browser on the operator's machine is a local caller for every page it has open.
Any page, from anywhere, can send that browser a ``text/plain`` POST to
``http://127.0.0.1:8000/api/v1/admin/applications`` (a "simple" request, sent
without a CORS preflight): CORS only hides the answer from the page, the
request itself is obeyed. Browsers say where such a request comes from
(``Origin``, and ``Sec-Fetch-Site``), so :class:`OriginGuard` answers 403
``forbidden`` to every request that may change something (any method but GET,
HEAD and OPTIONS) whose Origin is

- neither guestqueue's own: the Origin's host[:port] is the request's ``Host``
  (the scheme is not compared: behind a TLS proxy the page is https, the hop to
  guestqueue plain http),
- nor listed in ``GUEST_CORS_ORIGINS`` (``*`` lists every origin);

``Origin: null`` (a sandboxed frame, a ``file:`` page) is nobody's and refused.
A request without Origin passes unless ``Sec-Fetch-Site: cross-site`` says a
browser sent it for another site: curl, the SDKs, pull workers and servers send
neither header, and a browser's own same-origin GET needs none. OPTIONS passes,
so a CORS preflight still reaches CORSMiddleware.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Forbidden

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = (":80", ":443")


class OriginGuard:
    """ASGI middleware: 403 ``forbidden`` for a browser's write from a page of another origin.

    ``allowed`` are the origins a page may write from besides guestqueue's own
    (``GUEST_CORS_ORIGINS``)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(allowed)

    def __repr__(self) -> str:
        return f"OriginGuard(allowed={sorted(self.allowed)!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            refusal = self.refusal(Headers(scope=scope))
            if refusal is not None:
                # Middleware runs outside Starlette's exception handlers: answer as _rejected would.
                error = Forbidden(refusal)
                await JSONResponse(error.body(), status_code=error.status_code)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, headers: Headers) -> str | None:
        """Why a write with these headers is refused, or None if it may go on."""
        origin = headers.get("origin")
        if origin is None:
            if headers.get("sec-fetch-site", "").lower() == "cross-site":
                return "A page of another site may not send this request (Sec-Fetch-Site: cross-site)."
            return None
        if self.allows(origin, headers.get("host")):
            return None
        return (
            f"A page from {origin[:200]} may not send this request: only guestqueue's own pages and"
            " the origins in GUEST_CORS_ORIGINS may."
        )

    def allows(self, origin: str, host: str | None) -> bool:
        return origin_allowed(origin, host, self.allowed)


def origin_allowed(origin: str, host: str | None, allowed: Iterable[str]) -> bool:
    """May a page of ``origin`` talk to the server a browser reached as ``host``? Its own pages, and
    those of the ``allowed`` origins (GUEST_CORS_ORIGINS); never ``null``. (WebSockets too:
    web/websocket.py, since CORS does not cover them.)"""
    if origin == "null":
        return False
    if origin in allowed or "*" in allowed:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[::1": not an origin a browser sends
        return False
    return bool(netloc) and host is not None and _authority(netloc) == _authority(host)


def _authority(host_and_port: str) -> str:
    """``host[:port]`` as compared: lower case, without a default port (browsers leave it out)."""
    authority = host_and_port.strip().lower()
    for port in DEFAULT_PORTS:
        authority = authority.removesuffix(port)
    return authority
