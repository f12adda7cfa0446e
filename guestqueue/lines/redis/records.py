"""A flight's request on a shared line: the hash written at admission (and again by a rebuild),
read by whichever instance starts the flight, so that any instance can run it."""

from __future__ import annotations

import json
import time

from ...tickets import Flight
from ...upstream import WorkflowRequest

TIER_SPAN = 10**12  # as in scripts/aging.lua: a score is rank * TIER_SPAN + the flight's number
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


def running_shares(running: list[Flight], now_mono: float) -> list[list[object]]:
    """What a rebuild writes back of the flights this instance runs: each with how long it has run."""
    return [[f.id, round((now_mono - f.started_mono) * 1000) if f.started_mono is not None else 0] for f in running]


def waiting_shares(waiting: list[Flight], max_starvation_s: float) -> list[list[object]]:
    """What a rebuild writes back of this instance's guests' waiting flights whose number it knows:
    each at its old number, a lower tier's with the aging it has left (scripts/aging.lua)."""
    now = time.time()
    shares: list[list[object]] = []
    for flight in waiting:
        if flight.number <= 0:
            continue
        score, aging_ms = flight.number, 0
        if flight.rank > 0:
            waited_ms = (now - min((t.created_at for t in flight.tickets), default=now)) * 1000
            aging_ms = max(0, round(max_starvation_s * 1000 - waited_ms))
            if aging_ms > 0:
                score = flight.rank * TIER_SPAN + flight.number
        shares.append([flight.id, score, flight.number, aging_ms, request_fields(flight)])
    return shares
