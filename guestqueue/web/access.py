"""Who may read what.

A request id is its guest's bearer secret (128 random bits): whoever holds it may
resume, read and cancel that one request, and no view lists ids to anyone else.
The operator's views (``/queue/history``, ``/metrics``, and the status endpoints
when ``GUEST_PUBLIC_STATUS`` is false) need the ``X-API-Key`` admin key; with no
key set, they answer only local callers::

    access = Access(settings)
    access.require_operator(request)   # raises Unauthorized, Forbidden or TooManyAttempts

A local caller is a loopback client that did not come through an untrusted proxy:
behind nginx every peer is 127.0.0.1, so a forwarding header from a peer that is
not in ``GUEST_TRUSTED_PROXIES`` makes the caller remote, and with a trusted proxy
the forwarded address decides. :class:`PeerRecorder` keeps the TCP peer in
``scope["state"]`` before uvicorn's ProxyHeadersMiddleware replaces ``scope["client"]``.

Named lines and the admin API (tenancy/catalog.py) add API keys of applications, sent as
``X-API-Key`` or ``Authorization: Bearer``: :meth:`Access.principal` says who is
asking, :meth:`Access.require` whether they may do something on a line. The
admin key (``GUEST_ADMIN_API_KEY``) is the super admin; without one, a local
caller is (as for the operator's views).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from cachetools import TTLCache
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..errors import Forbidden, TooManyAttempts, Unauthorized
from ..outbound import OUTBOUND_HEADER
from ..tenancy.catalog import ANONYMOUS, KEY_PREFIX, SUPER_ADMIN, Catalog, Principal
from .admission import client_key

FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
FAILURES_PER_WINDOW = 5
WINDOW_S = 1.0
TRACKED_CLIENTS = 10_000  # bounds the throttle's memory whatever the number of addresses


class PeerRecorder:
    """ASGI middleware: remember the TCP peer as ``scope["state"]["peer"]`` (outermost, before proxy headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("state", {}).setdefault("peer", scope.get("client"))
        await self.app(scope, receive, send)


class AttemptThrottle:
    """At most ``limit`` failed admin keys per client per ``window_s``; then 429 until the window passes."""

    __slots__ = ("_failures", "limit", "window_s")

    def __init__(
        self, limit: int = FAILURES_PER_WINDOW, window_s: float = WINDOW_S, max_clients: int = TRACKED_CLIENTS
    ) -> None:
        self.limit, self.window_s = limit, window_s
        # Each failure re-inserts the entry, so the window runs from the client's last failure.
        self._failures: TTLCache[str, int] = TTLCache(maxsize=max_clients, ttl=window_s)

    def __repr__(self) -> str:
        return f"AttemptThrottle(limit={self.limit}, window_s={self.window_s}, clients={len(self._failures)})"

    def check(self, client: str) -> None:
        if self._failures.get(client, 0) >= self.limit:
            raise TooManyAttempts(
                "Too many wrong X-API-Key attempts. Wait a moment.", retry_after_s=max(1, round(self.window_s))
            )

    def failed(self, client: str) -> None:
        self._failures[client] = self._failures.get(client, 0) + 1


class Access:
    """The admin-or-local rule of the operator's views, with a throttle on wrong keys."""

    def __init__(self, settings: Settings) -> None:
        self.admin_key = settings.admin_api_key.encode("utf-8")
        self.trusted = _networks(settings.trusted_proxies)
        self.throttle = AttemptThrottle()

    def __repr__(self) -> str:
        return f"Access(admin_key={'set' if self.admin_key else 'unset'}, throttle={self.throttle!r})"

    def require_operator(self, request: HTTPConnection) -> None:
        if not self.admin_key:
            if not self.is_local(request):
                raise Forbidden(
                    "This endpoint answers only local callers: set GUEST_ADMIN_API_KEY to use it from elsewhere."
                )
            return
        client = client_key(request)
        self.throttle.check(client)
        given = request.headers.get("x-api-key")
        if given is None:
            raise Unauthorized("This endpoint needs the X-API-Key header.")
        # Starlette decodes header bytes as latin-1: re-encoding gives back the bytes as sent,
        # so a UTF-8 key typed as such matches the key's UTF-8 bytes.
        if not hmac.compare_digest(given.encode("latin-1"), self.admin_key):  # constant time
            self.throttle.failed(client)
            raise Forbidden("The X-API-Key is not valid.")

    def principal(self, request: HTTPConnection, catalog: Catalog) -> Principal:
        """Who sends this request: the super admin, an application's key, or nobody (no key; a
        local caller is the super admin while no admin key is set). A key that is not valid is
        refused (403), and counted by the throttle."""
        given = given_key(request)
        if given is None:
            return SUPER_ADMIN if not self.admin_key and self.is_local(request) else ANONYMOUS
        client = client_key(request)
        self.throttle.check(client)
        # Both checks always run, each in constant time: a wrong key costs what a right one does.
        is_admin = bool(self.admin_key) and hmac.compare_digest(given.encode("latin-1"), self.admin_key)
        found = catalog.principal(given)
        if is_admin:
            return SUPER_ADMIN
        if found is None and request.scope.get(FOREIGN_KEYS_ANONYMOUS) and not given.startswith(KEY_PREFIX):
            # An OpenAI client always sends some key ("sk-none", "EMPTY"): one that is not ours at
            # all asks as nobody does (web/openai/); a key of ours that is wrong is refused.
            return SUPER_ADMIN if not self.admin_key and self.is_local(request) else ANONYMOUS
        if found is None:
            self.throttle.failed(client)
            raise Forbidden("The API key is not valid (or was revoked).")
        return found

    def require(
        self, request: HTTPConnection, catalog: Catalog, permission: str, line: str, owner: str | None
    ) -> Principal:
        """The caller, if it may do ``permission`` on ``line`` (of application ``owner``); else
        401 (no key) or 403."""
        principal = self.principal(request, catalog)
        if principal.may(permission, line, owner):
            return principal
        if principal.role == "anonymous":
            raise Unauthorized(
                f"This needs an API key with {permission} on line {line!r} (X-API-Key or Authorization: Bearer)."
            )
        raise Forbidden(f"This API key does not have {permission} on line {line!r}.")

    def is_local(self, request: HTTPConnection) -> bool:
        if OUTBOUND_HEADER in request.headers:
            return False  # guestqueue's own request (a webhook, an upstream call) is never the operator
        if not _is_local_host(request.headers.get("host", "")):
            # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is
            # same-origin with its own name. The operator on this machine uses an address or localhost.
            return False
        state: dict[str, Any] = request.scope.get("state") or {}
        peer = state.get("peer", request.scope.get("client"))
        peer_host = peer[0] if peer else None
        forwarded = any(name in request.headers for name in FORWARDING_HEADERS)
        if not forwarded:
            return _is_loopback(peer_host)
        if not self._trusted(peer_host) or "x-forwarded-for" not in request.headers:
            return False  # someone's proxy, or headers we do not resolve: not provably local
        resolved = request.client.host if request.client else None  # ProxyHeadersMiddleware's answer
        return _is_loopback(resolved)

    def _trusted(self, host: str | None) -> bool:
        if host is None:
            return False
        if self.trusted == "*":
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)


# Set in a request's scope where a key not shaped like ours counts as none (the OpenAI front door).
FOREIGN_KEYS_ANONYMOUS = "guestqueue.foreign_keys_anonymous"


def given_key(request: HTTPConnection) -> str | None:
    """The key sent as X-API-Key, or as ``Authorization: Bearer KEY``."""
    key = request.headers.get("x-api-key")
    if key is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            key = credentials.strip()
    return key


def _networks(raw: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | str:
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if "*" in items:
        return "*"  # as uvicorn's trusted_hosts: every peer is a proxy
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue  # a host name: uvicorn may match it literally; we cannot, so it is not trusted here
    return networks


def _is_local_host(host_header: str) -> bool:
    """The Host a local operator sends: an address, or localhost (not a name someone else controls)."""
    host = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    host = host.strip("[]").split("]")[0].lower()
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
