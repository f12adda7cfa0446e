"""The guests' places of a line this process is alone on (lines/base.py's Places): nothing to share."""

from __future__ import annotations

import asyncio

from ..tickets import Flight, Ticket


class LocalPlaces:
    """The :class:`~guestqueue.lines.base.Places` of a line this process is alone on: no records to
    write, no other holder, no other instance to take a guest over."""

    instance_id = ""
    shared = False

    def record(
        self, ticket: Ticket, flight_id: str | None, *, event_id: int | None = None, whole: bool = False
    ) -> asyncio.Future[None] | None:
        return None

    async def load(self, request_id: str) -> None:
        return None

    async def claim(self, request_id: str) -> None:
        return None

    async def holder(self, request_id: str) -> str:
        return ""

    async def let_go(self, flight_id: str) -> bool:
        return True  # nobody else holds it

    async def take_client_slot(self, client: str, limit: int) -> bool:
        return True  # the registry's count is the whole count

    async def reserve_key(self, client: str, idempotency_key: str, request_id: str) -> str:
        return request_id

    async def forget_key(self, client: str, idempotency_key: str, request_id: str) -> None:
        return None

    def give_back_client_slot(self, client: str) -> None:
        return None

    async def abandon(self, flight: Flight) -> None:
        if flight.job is not None and not flight.job.done():
            flight.job.cancel()
