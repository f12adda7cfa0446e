"""How guestqueue is served: uvicorn's configuration, in one place, with limits for hostile clients.

``guestqueue serve`` and the tests build their uvicorn server from
:func:`uvicorn_config`, so what is tested is what runs. nginx in front remains
the recommended edge (nginx.conf), but the server defends itself without it:

- the request line and headers together are capped at ``GUEST_MAX_HEADER_BYTES``
  (h11's incomplete-event size, and :class:`HeadLimitedConnection` for a head that
  arrives whole in one read, which h11 does not measure; at 4 bytes or more a
  line, it bounds the number of headers too; beyond it 4xx and the connection
  closes). httptools, faster, has no such limit (a 1 MB header and 20 000 headers were accepted), hence h11
  by default; ``GUEST_HTTP=httptools`` is for a server behind a proxy that limits heads and
  times them out itself (nginx.conf), and needs ``GUEST_TRUSTED_PROXIES``: it keeps the
  connection cap (uvicorn's 503 beyond it) but not the head limits below;
- a connection whose head is not complete ``GUEST_HEADER_TIMEOUT_SEC`` after it
  opened (or after its first byte, on an idle keep-alive connection) is closed:
  uvicorn has no such timeout, and a client dribbling a byte now and then kept
  its socket (and its buffer) forever;
- at most ``GUEST_MAX_CONNECTIONS`` connections (by default the open-file limit
  minus a reserve, so the process never runs out of descriptors): beyond it a new
  connection first evicts one that has not finished its request head (a slow or
  idle client, never a guest being served), else it is closed;
- WebSocket messages are capped at ``GUEST_MAX_BODY_BYTES`` by the protocol
  (uvicorn's default buffers up to 16 MiB before our check), and pinged every
  ``GUEST_PING_SEC``: a peer that does not answer within ``GUEST_SEND_TIMEOUT_SEC``
  is dropped.

The request body has its own timeout, ``GUEST_BODY_TIMEOUT_SEC``, enforced where it
is read (:mod:`guestqueue.admission`): a ``Content-Length`` larger than what is sent
gets 408 instead of a hang.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Settings

# Idle keep-alive connections outlive the client's (httpx: 5 s, nginx upstream keepalive: 60 s),
# so a proxy never sends a request on a connection we are just closing (a POST is not retried).
KEEP_ALIVE_S = 75
# Descriptors kept free of connections: the request log, the upstream client's sockets, logs.
RESERVED_FDS = 64
# Evicted connections count until the loop reports them lost (the next iteration).
EVICTION_SLACK = 16


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, soft - RESERVED_FDS)


class HeadLimitedConnection(h11.Connection):
    """h11's server side, measuring a complete request head too.

    h11 checks ``max_incomplete_event_size`` only while the head is incomplete: one that
    arrives whole in a single read was parsed whatever its size (12 000 headers, 97 KB,
    answered 200 under the 64 KiB default). Refused like h11's own limit (400, closed).
    """

    def __init__(self, max_head_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.Request) and head_size(event) > self.max_head_bytes:
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return event


def head_size(request: h11.Request) -> int:
    """The bytes of a request head, give or take its whitespace (at least 4 per header line)."""
    return len(request.method) + len(request.target) + 12 + sum(len(n) + len(v) + 4 for n, v in request.headers)


class GuestH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for the request head, a size limit for a head that
    arrives in one read, and eviction past the connection limit (see the module docstring).
    :func:`uvicorn_config` sets the class attributes."""

    header_timeout_s: float = 10.0
    max_connections: int = 0
    max_header_bytes: int = 65536

    _head_deadline: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = HeadLimitedConnection(self.max_header_bytes)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections and len(self.connections) >= self.max_connections and not self._evict_one():
            self.transport.close()
            return
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The first byte of a new request on an idle keep-alive connection starts its head's clock.
        if self._head_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_deadline()

    def waiting_for_head(self) -> bool:
        return self._head_deadline is not None

    def _evict_one(self) -> bool:
        for other in self.connections:
            if other is not self and isinstance(other, GuestH11Protocol) and other.waiting_for_head():
                other._disarm_head_deadline()  # it stays in `connections` until the loop reports it lost
                other.transport.close()
                return True
        return False

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` under ``settings``; ``overrides`` are passed on to
    :class:`uvicorn.Config` (``log_level``, ``access_log``, ...) and win."""
    max_connections = settings.max_connections or default_max_connections()
    protocol: type[GuestH11Protocol] | str = type(
        "GuestH11Protocol",
        (GuestH11Protocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_connections": max_connections,
            "max_header_bytes": settings.max_header_bytes,
        },
    )
    # GuestH11Protocol keeps connections below max_connections by eviction; uvicorn's own check
    # (503 beyond it) then bounds the requests in flight, with room for connections being closed.
    limit = max_connections + EVICTION_SLACK
    if settings.http == "httptools":  # behind a proxy that guards the heads (the settings check that)
        protocol, limit = "httptools", max_connections
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        # Forwarded headers are believed only from GUEST_TRUSTED_PROXIES, by the app itself.
        "proxy_headers": False,
        "timeout_keep_alive": KEEP_ALIVE_S,
        # Let our own shutdown (finish work, then a terminal event for everyone) complete first.
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s) + 5,
        "http": protocol,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "limit_concurrency": limit,
        "backlog": settings.backlog,
        "ws_max_size": settings.max_body_bytes,
        "ws_ping_interval": settings.ping_s or None,
        "ws_ping_timeout": settings.send_timeout_s,
    }
    return uvicorn.Config(app, **{**options, **overrides})
