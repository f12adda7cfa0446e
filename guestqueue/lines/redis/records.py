"""A flight's request on a shared line: the hash written at admission (and again by a rebuild),
read by whichever instance starts the flight, so that any instance can run it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...tickets import Flight
from ...upstream import WorkflowRequest
from ..base import Joiner
from .keys import Keys
from .places import RECORD_TTL_S, record_fields

REQUEST_TTL_S = 86_400  # a request hash outlives any wait (GUEST_MAX_WAIT_SEC is far shorter)


@dataclass(frozen=True, slots=True)
class JoinedPlace:
    """What scripts/line_admit.lua adds for a joiner: its KEYS, and its ARGV before the request's."""

    keys: list[str]
    args: list[str | int | float]


def joined_place(keys: Keys, instance_id: str, flight: Flight, joiner: Joiner | None) -> JoinedPlace:
    """The joiner's client count and place record, written by the admission's script (one round
    trip instead of three: the count, the admission, the record)."""
    if joiner is None:
        return JoinedPlace([], [-1, instance_id, 0, "", 0])
    ticket = joiner.ticket
    fields = record_fields(ticket, flight.id, instance_id)
    fields["rank"] = flight.rank  # the ticket is not on its flight yet; its number is the script's
    items = [item for pair in fields.items() for item in pair]
    return JoinedPlace(
        [keys.client(ticket.client), keys.ticket(ticket.id), keys.held_requests(instance_id), keys.holders(flight.id)],
        [joiner.limit, instance_id, RECORD_TTL_S, ticket.id, len(items), *items],
    )


def request_fields(flight: Flight) -> list[str]:
    """The hash's fields and values, flat (as a script's ARGV takes them)."""
    request = flight.request
    fields = {
        "key": flight.key or "",
        "request_id": request.request_id,
        "query": request.query,
        "parameters": json.dumps(dict(request.parameters)),
        "session_id": request.session_id or "",
        "share": flight.share or "",  # a fair line's (scripts/line_start.lua charges it)
    }
    return [x for kv in fields.items() for x in kv]


def flight_from(flight_id: str, fields: dict[str, str]) -> Flight:
    """The flight another instance admitted, from its request hash."""
    request = WorkflowRequest(
        fields.get("request_id", flight_id),
        fields.get("query", ""),
        json.loads(fields.get("parameters") or "{}"),
        fields.get("session_id") or None,
    )
    flight = Flight(fields.get("key") or None, [], request, id=flight_id)
    flight.share = fields.get("share") or None
    return flight
