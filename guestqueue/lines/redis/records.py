"""A flight's request on a shared line: the hash written at admission (and again by a rebuild),
read by whichever instance starts the flight, so that any instance can run it."""

from __future__ import annotations

import json

from ...tickets import Flight
from ...upstream import WorkflowRequest

REQUEST_TTL_S = 86_400  # a request hash outlives any wait (GUEST_MAX_WAIT_SEC is far shorter)


def request_fields(flight: Flight) -> list[str]:
    """The hash's fields and values, flat (as a script's ARGV takes them)."""
    request = flight.request
    fields = {
        "key": flight.key or "",
        "request_id": request.request_id,
        "query": request.query,
        "parameters": json.dumps(dict(request.parameters)),
        "session_id": request.session_id or "",
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
    return Flight(fields.get("key") or None, [], request, id=flight_id)
