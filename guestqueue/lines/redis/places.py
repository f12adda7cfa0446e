"""Guests' places on a shared line: each request's record in Redis, and which instance holds it.

A guest's place belongs to the line, not to the process holding its
connection. Each admitted request has a record (what was asked, its flight,
its state, the id of its ``processing`` event and, once over, its terminal
event), so any instance can take over (*claim*) a guest who reconnects to it:
the claim names the new holder atomically and tells the old one, which lets go
of the request silently (no terminal event: the guest goes on elsewhere).

A flight stays in line while some instance holds one of its guests: each
flight has a set of holders, and :meth:`RedisPlaces.let_go` reports when the
last one left (then the flight leaves the line, or its call stops).

Invariants: one holder per request at a time; a holder set never empties
while an instance still holds a guest of the flight; a request record lives
``RECORD_TTL_S`` after its last change (long enough to resume or look it up).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ...events import PROCESSING
from ...scripts import load_script
from ...tickets import Flight, Status, Ticket
from .boundary import call, logged, text, unavailable
from .keys import Keys

logger = logging.getLogger("guestqueue.lines.redis.places")

RECORD_TTL_S = 3600

ABANDONED = ["error", {"error": "The guest did not come back.", "code": "disconnected"}]


@dataclass(frozen=True, slots=True)
class PlaceRecord:
    """A request as another instance recorded it."""

    request_id: str
    flight_id: str
    client: str
    query: str
    parameters: dict[str, Any]
    session_id: str | None
    idempotency_key: str | None
    status: Status
    created_at: float
    max_wait_s: float | None  # its guest's own limit in line (max_wait_sec)
    started_at: float | None
    started_event_id: int | None  # the id of its `processing` event (its chunks follow it)
    holder: str
    cached: bool
    number: int  # its flight's ticket number on the shared line (0 if not known)
    rank: int  # its flight's priority tier
    terminal: tuple[str, dict[str, Any]] | None  # (event name, payload) once over
    terminal_event_id: int | None  # its id, as the guests of the instance that ended it heard it
    raw: dict[str, str]

    def summary(self) -> dict[str, Any]:
        return summary(self.request_id, self.raw)


class RedisPlaces:
    shared = True  # guests keep their places when this instance stops (service.py)

    def __init__(self, redis: aioredis.Redis, keys: Keys, instance_id: str) -> None:
        self._redis = redis
        self._keys = keys
        self.instance_id = instance_id
        self._claim = redis.register_script(load_script("places_claim"))
        self._reap = redis.register_script(load_script("places_reap"))
        self._take_client = redis.register_script(load_script("places_take_client_slot"))
        self._write_record = redis.register_script(load_script("places_write_record"))
        self._last_write: dict[str, asyncio.Future[None]] = {}  # per request: its writes land in order

    def record(
        self, ticket: Ticket, flight_id: str | None, *, event_id: int | None = None, whole: bool = False
    ) -> asyncio.Future[None]:
        """Write ``ticket`` as it is now (admission, start, end; ``whole``: everything, for a Redis
        that forgot it); this instance holds it. The fields are read at once and written after the
        request's earlier writes; the returned future is done when this one landed (or failed,
        which is logged)."""
        fields = record_fields(ticket, flight_id, self.instance_id, event_id=event_id, whole=whole)
        admission = ticket.status is Status.QUEUED or whole
        holders = flight_id if flight_id and admission and not ticket.done else None
        # One write after the other: on two pooled connections a `processing` write could land
        # after the ending and make a finished request look running to the next instance.
        previous = self._last_write.get(ticket.id)
        write = asyncio.ensure_future(self._write(ticket.id, fields, holders, after=previous))
        self._last_write[ticket.id] = write
        write.add_done_callback(lambda done: self._written(ticket.id, done))
        return write

    def _written(self, request_id: str, write: asyncio.Future[None]) -> None:
        if self._last_write.get(request_id) is write:
            del self._last_write[request_id]

    async def _write(
        self,
        request_id: str,
        fields: dict[str, str | int | float],
        flight_id: str | None,
        *,
        after: asyncio.Future[None] | None = None,
    ) -> None:
        if after is not None:
            await asyncio.wait([after])  # its own errors are its own (logged there)
        key = self._keys.ticket(request_id)
        pairs = [item for pair in fields.items() for item in pair]
        await logged(
            self._write_record(
                keys=[key, self._keys.held_requests(self.instance_id), self._keys.holders(flight_id or "-")],
                args=[
                    self.instance_id,
                    RECORD_TTL_S,
                    int("terminal" in fields),
                    int(flight_id is not None),
                    request_id,
                    *pairs,
                ],
            ),
            f"{key}: record not written",
        )

    async def load(self, request_id: str) -> PlaceRecord | None:
        raw = await call(self._redis.hgetall(self._keys.ticket(request_id)))
        return _record(request_id, {text(k): text(v) for k, v in raw.items()}) if raw else None

    async def holder(self, request_id: str) -> str:
        """The instance holding the request now ('' if no record)."""
        value = await call(self._redis.hget(self._keys.ticket(request_id), "holder"))
        return text(value) if value is not None else ""

    async def claim(self, request_id: str) -> PlaceRecord | None:
        """Become the holder of a request recorded by another instance (the old holder is told)."""
        with unavailable():
            previous = await self._claim(keys=[self._keys.ticket(request_id)], args=[self.instance_id])
            if previous is None:
                return None
            record = await self.load(request_id)
            if record is None:
                return None
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(self._keys.held_requests(self.instance_id), request_id)
                pipe.sadd(self._keys.holders(record.flight_id), self.instance_id)
                pipe.publish(self._keys.moved_channel, json.dumps([request_id, text(previous), self.instance_id]))
                await pipe.execute()
            return record

    async def reap(self, grace_s: float) -> int:
        """Release the places of instances dead for longer than ``grace_s``; how many."""
        released = await self._reap(
            keys=[self._keys.instances, self._keys.line],
            args=[round(grace_s * 1000), self._keys.prefix, json.dumps(ABANDONED)],
        )
        return int(released)

    async def reserve_key(self, client: str, idempotency_key: str, request_id: str) -> str:
        """The request this client's Idempotency-Key names: ``request_id`` if the key was free."""
        key = self._keys.idempotency(client, idempotency_key)
        with unavailable():
            if await self._redis.set(key, request_id, nx=True, ex=RECORD_TTL_S):
                return request_id
            owner = await self._redis.get(key)
        return text(owner) if owner is not None else request_id

    async def forget_key(self, client: str, idempotency_key: str, request_id: str) -> None:
        """The request reserved under this key was refused: the key may name the next one."""
        key = self._keys.idempotency(client, idempotency_key)
        await logged(self._release_key(key, request_id), "Idempotency-Key not released")

    async def _release_key(self, key: str, request_id: str) -> None:
        if await self._redis.get(key) in (request_id, request_id.encode()):
            await self._redis.delete(key)

    async def take_client_slot(self, client: str, limit: int) -> bool:
        """Count one more request of ``client`` on every instance, unless it has ``limit`` already."""
        return bool(await call(self._take_client(keys=[self._keys.client(client)], args=[limit, RECORD_TTL_S])))

    def give_back_client_slot(self, client: str) -> Awaitable[None]:
        return self._give_back(client)

    async def _give_back(self, client: str) -> None:
        await logged(self._count_down(client), f"client {client}: count not given back")

    async def _count_down(self, client: str) -> None:
        if await self._redis.decr(self._keys.client(client)) <= 0:
            await self._redis.delete(self._keys.client(client))

    async def let_go(self, flight_id: str) -> bool:
        """This instance holds no more guests of the flight; True if no instance does any more."""
        key = self._keys.holders(flight_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.srem(key, self.instance_id)
            pipe.scard(key)
            _, left = await pipe.execute()
        return int(left) == 0

    async def abandon(self, flight: Flight) -> None:
        """Nobody holds the started ``flight`` any more: its runner, wherever it is, stops the call
        (lines/redis/relay.py hears the cancel)."""
        channel = self._keys.cancel_channel
        await logged(self._redis.publish(channel, flight.id), f"flight {flight.id}: cancel not relayed")


def summary(request_id: str, raw: dict[str, str]) -> dict[str, Any]:
    """``/queue/request/{id}``'s body from a request's record (lines/redis/places.py)."""
    out: dict[str, Any] = {
        "request_id": request_id,
        "status": raw.get("status", "queued"),
        "created_at": float(raw.get("created_at") or 0),
    }
    for name in ("started_at", "finished_at"):
        if raw.get(name):
            out[name] = float(raw[name])
    for name in ("wait_ms", "duration_ms"):
        if raw.get(name):
            out[name] = round(float(raw[name]), 1)
    if raw.get("terminal"):
        event, payload = json.loads(raw["terminal"])[:2]
        if event != "workflow_complete" and isinstance(payload, dict):
            if "error" in payload:
                out["error"] = payload["error"]
            if "code" in payload:
                out["error_code"] = payload["code"]
            elif event == "timeout":
                out["error_code"] = "timeout"
    if raw.get("cached") == "1":
        out["cached"] = True
    return out


def _record(request_id: str, raw: dict[str, str]) -> PlaceRecord:
    terminal = json.loads(raw["terminal"]) if raw.get("terminal") else None
    return PlaceRecord(
        request_id=request_id,
        flight_id=raw.get("flight_id", ""),
        client=raw.get("client", ""),
        query=raw.get("query", ""),
        parameters=json.loads(raw.get("parameters") or "{}"),
        session_id=raw.get("session_id") or None,
        idempotency_key=raw.get("idempotency_key") or None,
        status=Status(raw.get("status", "queued")),
        created_at=float(raw.get("created_at") or 0),
        max_wait_s=float(raw["max_wait_s"]) if raw.get("max_wait_s") else None,
        started_at=float(raw["started_at"]) if raw.get("started_at") else None,
        started_event_id=int(raw["started_event_id"]) if raw.get("started_event_id") else None,
        holder=raw.get("holder", ""),
        cached=raw.get("cached") == "1",
        number=int(raw.get("number") or 0),
        rank=int(raw.get("rank") or 0),
        terminal=(terminal[0], terminal[1]) if terminal else None,
        raw=raw,
        terminal_event_id=int(terminal[2]) if terminal and len(terminal) > 2 else None,
    )


def record_fields(
    ticket: Ticket, flight_id: str | None, instance_id: str, *, event_id: int | None = None, whole: bool = False
) -> dict[str, str | int | float]:
    """A request's record as ``ticket`` stands now, held by ``instance_id`` (see RedisPlaces.record)."""
    fields: dict[str, str | int | float] = {
        "status": ticket.status.value,
        "holder": instance_id,
        "cached": int(ticket.cached),
    }
    admission = ticket.status is Status.QUEUED or whole
    if admission:
        flight = ticket.flight
        fields.update(
            {
                "flight_id": flight_id or "",
                "client": ticket.client,
                "query": ticket.query,
                "parameters": json.dumps(ticket.parameters),
                "session_id": ticket.session_id or "",
                "idempotency_key": ticket.idempotency_key or "",
                "created_at": ticket.created_at,
                "max_wait_s": ticket.max_wait_s or "",
                "number": flight.number if flight is not None else 0,
                "rank": flight.rank if flight is not None else 0,
            }
        )
    for name in ("started_at", "finished_at", "wait_ms", "duration_ms"):
        if (value := getattr(ticket, name)) is not None:
            fields[name] = value
    if whole and ticket.status is Status.PROCESSING:
        event_id = next((e.id for e in ticket.events.after(0) if e.name == PROCESSING), None)
    if event_id is not None and ticket.status is Status.PROCESSING:
        fields["started_event_id"] = event_id
    if ticket.done and (terminal := ticket.events.terminal_event()) is not None:
        # With its id: an instance that takes the request over after its end gives the ending
        # the same id (a guest that saw it gets 204 there too), never a new one.
        fields["terminal"] = json.dumps([terminal.name, terminal.data, terminal.id])
    return fields
