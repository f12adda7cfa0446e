"""Who is still there: the guests' open streams, the reconnect grace, polling, and the wait limit.

A request whose last stream ends is let go after the reconnect grace unless a stream comes back;
one followed by polling, ``grace_s`` after its last poll; one still in line after ``max_wait_s``
ends ``wait_timeout`` (or ``timeout`` ``deadline`` after its guest's own ``max_wait_sec``, if
sooner). Open streams are counted per request and per client (a bounded number each), and
checked several times a second (pings, stuck sends).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Protocol

from .core import Core
from .endings import Endings
from .errors import ClientLimit
from .tickets import Status, Ticket

DROP_MESSAGES = {
    "disconnected": "The guest disconnected.",
    "send_timeout": "The guest stopped reading the answer.",
    "stopped_polling": "The guest stopped asking for its place.",
}
# Open SSE streams of one request: a guest reconnecting while its old stream is not yet seen to be
# gone needs two, a second tab three. A newer stream ends the oldest beyond it.
MAX_STREAMS_PER_REQUEST = 3
# Resume streams one client may hold open, per question it may have (GUEST_MAX_PER_CLIENT): a guest
# reconnecting every question it has is never refused; 2 000 resume streams of one client are.
STREAMS_PER_QUESTION = MAX_STREAMS_PER_REQUEST


class OpenStream(Protocol):
    def check(self, now: float) -> None: ...

    def end(self, *, flush: bool = False) -> None: ...


class Attendance:
    def __init__(self, core: Core, endings: Endings) -> None:
        self._core = core
        self._endings = endings
        self.streams: set[OpenStream] = set()  # the guests' open SSE responses
        self._by_request: dict[str, list[OpenStream]] = {}  # oldest first
        self._by_client: Counter[str] = Counter()

    # -- streams -------------------------------------------------------------------------

    def open_stream(self, ticket: Ticket, stream: OpenStream, client: str, *, resume: bool) -> None:
        """Count an SSE stream of ``ticket`` held by ``client``; raise ClientLimit for a resume stream
        beyond the client's share, and end the request's oldest stream beyond MAX_STREAMS_PER_REQUEST."""
        limit = self._core.settings.max_per_client * STREAMS_PER_QUESTION
        if resume and self._by_client[client] >= limit:
            exc = ClientLimit(
                f"You already have {count(limit, 'open stream')}. Close one before opening more.", retry_after_s=1
            )
            self._core.stats.rejections[exc.code] += 1
            exc.counted = True
            raise exc
        streams = self._by_request.setdefault(ticket.id, [])
        streams.append(stream)
        self._by_client[client] += 1
        if len(streams) > MAX_STREAMS_PER_REQUEST:
            streams.pop(0).end()  # the newest wins: the guest's latest tab or reconnect

    def close_stream(self, ticket: Ticket, stream: OpenStream, client: str) -> None:
        streams = self._by_request.get(ticket.id, [])
        if stream in streams:
            streams.remove(stream)
        if not streams:
            self._by_request.pop(ticket.id, None)
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    def streams_of(self, request_id: str) -> list[OpenStream]:
        return list(self._by_request.get(request_id, []))

    async def watch_streams(self) -> None:
        """One pass over the open streams, several times a second: quiet ones send a ping (which
        keeps proxies from timing them out), sends stuck past the send timeout are let go."""
        settings = self._core.settings
        every_s = min(1.0, settings.send_timeout_s / 4, *([settings.ping_s / 2] if settings.ping_s > 0 else []))
        while True:
            await asyncio.sleep(every_s)
            now = time.monotonic()  # the clock web/stream.py times its sends on (real sockets: real time)
            for stream in list(self.streams):
                stream.check(now)

    # -- guests coming and going ----------------------------------------------------------

    def subscribe(self, ticket: Ticket) -> None:
        ticket.subscribers += 1
        if ticket.grace_timer is not None:
            ticket.grace_timer.cancel()
            ticket.grace_timer = None

    def unsubscribe(self, ticket: Ticket, *, reason: str = "disconnected") -> None:
        """A stream ended; ``reason`` (``disconnected``, ``send_timeout``) is the row's code if the guest
        does not come back within the reconnect grace."""
        ticket.subscribers -= 1
        if ticket.subscribers == 0 and not ticket.done and not ticket.moved:
            ticket.drop_reason = reason
            loop = asyncio.get_running_loop()
            ticket.grace_timer = loop.call_later(self._core.settings.reconnect_grace_s, self._abandon, ticket)

    def polled(self, ticket: Ticket, grace_s: float) -> None:
        """A guest following by polling (an admission line's ``GET …/join/{id}``) keeps its place while
        it polls: without a stream, it is let go ``grace_s`` after its last poll."""
        if ticket.done or ticket.moved or ticket.subscribers > 0:
            return
        if ticket.grace_timer is not None:
            ticket.grace_timer.cancel()
        ticket.drop_reason = "stopped_polling"
        ticket.grace_timer = asyncio.get_running_loop().call_later(grace_s, self._abandon, ticket)

    def expire(self, ticket: Ticket, waited_s: float = 0.0) -> None:
        """``ticket``, in line for ``waited_s`` already, leaves if it is still there at the line's
        ``max_wait_s`` (``wait_timeout``) or at its guest's own ``max_wait_sec`` if that is sooner
        (``timeout`` code ``deadline``)."""
        limit_s, own_s = self._core.settings.max_wait_s, ticket.max_wait_s
        deadline = own_s is not None and own_s < limit_s
        after_s = (own_s if deadline and own_s is not None else limit_s) - waited_s
        loop = asyncio.get_running_loop()
        ticket.expiry_timer = loop.call_later(max(0.0, after_s), self._expire, ticket, deadline)

    def release(self, request_id: str) -> None:
        """Another instance took this request over: its streams here end, and it is let go of
        without an ending."""
        ticket = self._core.registry.get(request_id)
        if ticket is None or ticket.done:
            return
        for stream in self.streams_of(ticket.id):
            stream.end()
        self._endings.let_go_of(ticket, abandon=False)

    def _abandon(self, ticket: Ticket) -> None:
        ticket.grace_timer = None
        if ticket.subscribers == 0:
            code = ticket.drop_reason or "disconnected"
            self._endings.cancel(ticket, Status.CANCELLED, code, DROP_MESSAGES.get(code, "The guest disconnected."))

    def _expire(self, ticket: Ticket, deadline: bool) -> None:
        ticket.expiry_timer = None
        if ticket.status is Status.QUEUED and deadline:
            self._endings.end_at_deadline(ticket)
        elif ticket.status is Status.QUEUED:
            message = "The line is moving slowly today. Please try again later."
            self._endings.cancel(ticket, Status.CANCELLED, "wait_timeout", message)


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
