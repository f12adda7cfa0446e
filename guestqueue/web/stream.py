"""Streaming one ticket's events to one connected guest over SSE.

A small ASGI response of our own rather than sse-starlette's
``EventSourceResponse``: that one runs five tasks per connection (stream,
ping, disconnect listener, shutdown watcher, and their task group) and takes
an anyio lock and a cancel scope for every event, which at 10 000 waiting
guests was three quarters of the server's CPU (docs/benchmarks.md). Here a
connection costs the response's own task and one disconnect listener:

- pings and send timeouts: one pass of the service over the open streams
  (:meth:`TicketStream.check`, several times a second) nudges a stream quiet for
  ``GUEST_PING_SEC`` to send a comment, and lets go of a guest whose send has
  been stuck for ``GUEST_SEND_TIMEOUT_SEC`` (it stopped reading): no timer per
  stream, nothing per event but two clock reads;
- shutdown: the service ends every request with a terminal event, which ends
  its streams.

The event bytes come pre-encoded from :mod:`guestqueue.events`. The response
counts as the ticket's subscriber from the moment it is created until it has
finished, however it finishes, so a guest who vanishes (even before the first
byte) starts the reconnect grace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from starlette.types import Message, Receive, Scope, Send

from ..events import Event
from ..service import QueueService
from ..tickets import Ticket

logger = logging.getLogger("guestqueue.stream")

PING = b": ping\n\n"
ENDING_WRITE_WAIT_S = 2.0


class TicketStream:
    media_type = "text/event-stream"

    def __init__(
        self,
        service: QueueService,
        ticket: Ticket,
        last_event_id: int = 0,
        *,
        client: str = "unknown",
        resume: bool = False,
    ) -> None:
        self._service = service
        self._ticket = ticket
        self._last_event_id = last_event_id
        self._gone = False
        self._flush = False  # end once the events published so far are sent
        self._task: asyncio.Task[object] | None = None
        self._sending_since: float | None = None
        self._last_sent = time.monotonic()
        self._timed_out = False
        # The process's, fixed for its life (no line sets them): read once, not at each check.
        self._send_timeout_s, self._ping_s = service.settings.send_timeout_s, service.settings.ping_s
        self.headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
            (b"x-request-id", ticket.id.encode()),
        ]
        self._client = client
        service.open_stream(ticket, self, client, resume=resume)  # may refuse (429): before subscribing
        service.subscribe(ticket)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._task = asyncio.current_task()
        self._service.streams.add(self)
        reason = "disconnected"
        listener = asyncio.ensure_future(self._listen(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            if scope.get("method") != "HEAD":
                async for chunk in self._chunks():
                    self._sending_since = time.monotonic()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    self._sending_since = None
                    self._last_sent = time.monotonic()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # check() cancels a send stuck for the send timeout; any other cancellation goes on.
            if not self._timed_out or self._task is None or self._task.uncancel() > 0:
                raise
            # The guest took no bytes (a frozen tab, a dead network): let go of it like a guest
            # whose stream dropped, keeping the reason for its row.
            reason = "send_timeout"
            logger.info(
                "request %s: the guest took no bytes for %gs; let go",
                self._ticket.id,
                self._send_timeout_s,
            )
        except OSError:
            pass  # the guest went away mid-send
        finally:
            listener.cancel()
            self._service.streams.discard(self)
            self._service.close_stream(self._ticket, self, self._client)
            self._service.unsubscribe(self._ticket, reason=reason)

    def end(self, *, flush: bool = False) -> None:
        """End this stream (a newer stream of the same request replaces it): no terminal event,
        the guest's EventSource would reconnect, which is why the newest wins. ``flush``: send
        the events already published first (a ``reconnect`` event)."""
        if flush:
            self._flush = True
        else:
            self._gone = True
        self._ticket.events.nudge()

    def check(self, now: float) -> None:
        """The service's pass over open streams: let go of a stuck send, or ping a quiet stream."""
        since = self._sending_since
        if since is not None:
            if now - since > self._send_timeout_s and not self._timed_out and self._task is not None:
                self._timed_out = True
                self._task.cancel()
        elif self._ping_s > 0 and now - self._last_sent >= self._ping_s:
            self._last_sent = now
            self._ticket.events.nudge()  # wakes the stream with nothing new: it sends a ping

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The ticket's events after the guest's last seen id, live, until the terminal one;
        a ping when woken with nothing new (the service nudges quiet streams)."""
        seen = self._last_event_id
        log = self._ticket.events
        while not self._gone:
            events = log.after(seen)
            for event in events:
                if event.terminal:
                    await self._ending_written()
                yield self._encode(event)
                seen = event.id
                if event.terminal:
                    return
            if log.closed or self._flush:
                return  # ended before the guest's last seen id, or told to stop after what it had
            if not events:
                yield PING
            await log.wait()

    async def _ending_written(self) -> None:
        """On a shared line, the ending goes out once Redis has it: a guest that heard it and then
        resumes on another instance must find the request over there, not running. A stalled
        Redis delays it by ENDING_WRITE_WAIT_S at most."""
        written = self._ticket.ending_written
        if written is not None and not written.done():
            await asyncio.wait([written], timeout=ENDING_WRITE_WAIT_S)

    def _encode(self, event: Event) -> bytes:
        """An event as this stream's bytes (guestqueue's SSE framing; the OpenAI stream has its own)."""
        return event.encode()

    async def _listen(self, receive: Receive) -> None:
        message: Message = {}
        while message.get("type") != "http.disconnect":
            message = await receive()
        self._gone = True
        self._ticket.events.nudge()
