"""Fair shares in a simulation (``--shares heavy=10,light=1``): each guest belongs to a share drawn
by weight, and the summary says what each share got: its waits, its service, and the largest
difference in service between two shares over any time both were backlogged, against the bound
fairness.py states (2 U, U = max_concurrent times the largest call's service)."""

from __future__ import annotations

import itertools
from typing import Any

from ..fairness import jain_index, service_of
from .scenario import Guest, quantile

ANSWER_CHARS_PER_S = 200  # a simulated answer streams this many characters a second of its call


def answer_chars(call_s: float) -> int:
    return round(call_s * ANSWER_CHARS_PER_S)


def figures(guests: list[Guest], max_concurrent: int) -> dict[str, Any]:
    """Per share: guests, served, wait p50/p90, service; and the service gap between shares."""
    by_share: dict[str, list[Guest]] = {}
    for guest in guests:
        by_share.setdefault(guest.share or "", []).append(guest)
    per_share = {}
    for share, mine in sorted(by_share.items()):
        waits = sorted(g.wait_s for g in mine if g.wait_s is not None)
        per_share[share] = {
            "guests": len(mine),
            "served": len(waits),
            "wait_p50_sec": quantile(waits, 0.5),
            "wait_p90_sec": quantile(waits, 0.9),
            "service": round(sum(_service(g) for g in mine if g.wait_s is not None)),
        }
    largest = max((_service(g) for g in guests if g.wait_s is not None), default=0.0)
    gap, backlogged = _largest_gap(guests)
    return {
        "per_share": per_share,
        "service_gap_max": round(gap),
        "service_gap_bound": round(2 * max_concurrent * largest),
        "jain_index_backlogged": None if (index := jain_index(list(backlogged.values()))) is None else round(index, 3),
    }


def _service(guest: Guest) -> float:
    return service_of(answer_chars(guest.call_s))


def _largest_gap(guests: list[Guest]) -> tuple[float, dict[str, float]]:
    """The largest |W_f - W_g| over any interval both shares f and g were backlogged (a guest
    admitted and not started yet), W being the service of the calls a share started in it (as the
    paper counts it); and each share's service while every share was backlogged."""
    events: list[tuple[float, int, str, float]] = []  # (time, 0 = joins / 1 = starts / 2 = leaves, share, service)
    for guest in guests:
        ticket = guest.ticket
        if ticket is None or ticket.wait_ms is None or guest.share is None:
            continue
        left = guest.arrival_s + ticket.wait_ms / 1000
        events.append((guest.arrival_s, 0, guest.share, 0.0))
        if guest.wait_s is not None:
            events.append((left, 1, guest.share, _service(guest)))
        events.append((left, 2, guest.share, 0.0))
    events.sort(key=lambda e: (e[0], e[1]))
    shares = sorted({e[2] for e in events})
    largest = 0.0
    for f, g in itertools.combinations(shares, 2):
        largest = max(largest, _gap(events, f, g))
    together: dict[str, float] = dict.fromkeys(shares, 0.0)
    waiting = dict.fromkeys(shares, 0)
    for _, kind, share, service in events:
        if kind == 0:
            waiting[share] += 1
        elif kind == 1 and all(waiting.values()):
            together[share] += service
        elif kind == 2:
            waiting[share] -= 1
    return largest, together


def _gap(events: list[tuple[float, int, str, float]], f: str, g: str) -> float:
    waiting = {f: 0, g: 0}
    largest, low, high, difference = 0.0, 0.0, 0.0, 0.0
    for _, kind, share, service in events:
        if share not in waiting:
            continue
        if kind == 0:
            if waiting[share] == 0 and waiting[f if share == g else g] > 0:
                low = high = difference = 0.0  # both backlogged from now: a new interval
            waiting[share] += 1
        elif kind == 1 and all(waiting.values()):
            difference += service if share == f else -service
            low, high = min(low, difference), max(high, difference)
            largest = max(largest, high - low)
        elif kind == 2:
            waiting[share] -= 1
    return largest
