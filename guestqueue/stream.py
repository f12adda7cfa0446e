"""Streaming one ticket's events to one connected guest over SSE.

Built on sse-starlette's ``EventSourceResponse`` for pings, send timeouts and
disconnect detection; the bytes of each event come pre-encoded from
:mod:`guestqueue.events`. The response counts as the ticket's subscriber from
the moment it is created until it has finished, however it finishes, so a
guest who vanishes (even before the first byte) starts the reconnect grace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from .service import QueueService
from .tickets import Ticket

logger = logging.getLogger("guestqueue.stream")


async def ticket_events(ticket: Ticket, last_event_id: int = 0) -> AsyncIterator[bytes]:
    """The ticket's events after ``last_event_id``, live, until its terminal event."""
    seen = last_event_id
    log = ticket.events
    while True:
        for event in log.after(seen):
            yield event.encode()
            seen = event.id
            if event.terminal:
                return
        if log.closed:
            return  # ended before the guest's last seen id: nothing more will come
        await log.wait_after(seen)


class TicketStream(EventSourceResponse):
    def __init__(self, service: QueueService, ticket: Ticket, last_event_id: int = 0) -> None:
        settings = service.settings
        super().__init__(
            ticket_events(ticket, last_event_id),
            headers={"X-Request-ID": ticket.id, "Cache-Control": "no-cache"},
            ping=settings.ping_s,
            sep="\n",
            # A guest that takes no bytes for this long (a frozen tab, a dead network) is let go.
            send_timeout=settings.send_timeout_s,
            # Our own shutdown ends every stream with a terminal event; sse-starlette must not cut it first.
            shutdown_grace_period=settings.shutdown_grace_s + 5,
        )
        self._service = service
        self._ticket = ticket
        service.subscribe(ticket)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = "disconnected"
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:  # the data send, the ping, or both at once (then as a group)
            # The guest stopped taking bytes (a frozen tab, a dead network): let go of it like a
            # guest whose stream dropped, but keep the reason for its row. Not an error of ours,
            # so it is not re-raised into uvicorn's "Exception in ASGI application" log.
            reason = "send_timeout"
            logger.info("request %s: the guest took no bytes for %gs; let go", self._ticket.id,
                        self._service.settings.send_timeout_s)
        finally:
            self._service.unsubscribe(self._ticket, reason=reason)
