"""Fair shares on a line (``fairness = "fair"``): Virtual Token Counter scheduling (Sheng et al.,
"Fairness in Serving Large Language Models", OSDI 2024), on both lines.

Each *share* (the asker's application, else its API key, else its address: web/admission.py
``share_key``) has a counter of the service it received. A call's service is counted in
characters: :data:`CALL_COST` for the call itself plus its answer's characters (or, where the
upstream reports its usage, 4 per completion token). When a slot frees,
the waiting flight whose share has the least counter starts, FIFO within a share; a share that had
nothing waiting rejoins at the least counter among the shares waiting in its tier (just after it:
it came later; with nobody waiting, at the tag of the last start), so idling earns no credit.
Tiers stay strict (with aging): fairness orders flights within a tier.

Both lines keep the order as each waiting flight's *tag*: the counter its share will have when the
flight is next of its share. The j-th waiting flight of share k has tag ``c_k + j * E``, E being
the expected service of one call (a running mean); a line is sorted by (tier, tag), so a view's
positions are "how many start before you, as the line stands now". A start charges its share E;
when the call ends the share is charged the difference between its real service and E, and its
waiting flights move by as much (guests moved back hear it at once).

The paper's bound (its Theorem 4.4), in our terms: while two shares are both backlogged, the
service they received over any interval differs by at most ``2 * U``, U being the most service
one share can have under way at once: ``max_concurrent * (CALL_COST + the longest answer)``.
The line never idles while a flight waits: fairness only chooses which flight a free slot starts.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from sortedcontainers import SortedKeyList

from . import clock
from .tickets import Flight

CALL_COST = 500.0  # service every call costs (in answer characters), answered or not
CHARS_PER_TOKEN = 4.0  # OpenAI's rule of thumb for English: a reported token counts as four characters
EXPECTED_WEIGHT = 0.1  # of the last call, in the running mean of a call's service
WINDOW_S = 60.0  # the per-share service and the fairness index cover this much
MAX_SHOWN = 20  # shares the metrics and the dashboard name (the most served)
NAMED_SHARES = ("app:", "key:")  # shares named by an application or an API key (web/admission.py)
ADDRESSES = "addresses"  # every share named by a peer address, as the metrics show them
PRUNE_EVERY = 256  # starts between two prunings of idle shares' counters (memory line)


def service_of(answer_chars: int, tokens: int | None = None) -> float:
    """What one call cost: the call, and its answer's characters, or, where the upstream reported
    its usage, its tokens (:data:`CHARS_PER_TOKEN` characters each: one unit for every share)."""
    return CALL_COST + (tokens * CHARS_PER_TOKEN if tokens is not None else answer_chars)


def jain_index(values: list[float]) -> float | None:
    """Jain's fairness index, (sum x)^2 / (n * sum x^2): 1.0 when all are equal, 1/n when one
    share has everything; None without anything served."""
    total, squares = sum(values), sum(v * v for v in values)
    if not values or squares <= 0:
        return None
    return total * total / (len(values) * squares)


class Shares:
    """One line's fair-share bookkeeping in this process: the expected service of a call (E, which
    every start charges) and the service each share received from the calls this process ran, over
    the last :data:`WINDOW_S` (for ``/metrics`` and the dashboard)."""

    def __init__(self) -> None:
        self.expected = CALL_COST
        self._served: deque[tuple[float, str, float]] = deque()  # (time, share, service)

    def __repr__(self) -> str:
        return f"Shares(expected={self.expected:.0f}, served={len(self._served)})"

    def served(self, share: str, service: float) -> None:
        """A call of ``share`` ended having cost ``service``."""
        self.expected += EXPECTED_WEIGHT * (service - self.expected)
        now = clock.monotonic()
        self._served.append((now, share, service))
        self._forget(now)

    def recent(self) -> dict[str, float]:
        """Service per share over the last :data:`WINDOW_S`."""
        self._forget(clock.monotonic())
        totals: dict[str, float] = {}
        for _, share, service in self._served:
            totals[share] = totals.get(share, 0.0) + service
        return totals

    def snapshot(self) -> dict[str, Any]:
        """What the metrics and the dashboard show: Jain's index over every share served in the
        window, and the most served shares' service. A share named by a peer address is nobody's
        to see: those are shown together, as ``addresses``."""
        recent = self.recent()
        index = jain_index(list(recent.values()))
        named: dict[str, float] = {}
        for share, value in recent.items():
            shown = share if share.startswith(NAMED_SHARES) else ADDRESSES
            named[shown] = named.get(shown, 0.0) + value
        top = sorted(named.items(), key=lambda item: -item[1])[:MAX_SHOWN]
        return {
            "window_sec": WINDOW_S,
            "jain_index": None if index is None else round(index, 4),
            "shares": len(recent),
            "service": {share: round(value) for share, value in top},
        }

    def _forget(self, now: float) -> None:
        while self._served and self._served[0][0] < now - WINDOW_S:
            self._served.popleft()


class FairOrder:
    """The memory line's fair order (lines/memory.py): each share's counter, its waiting flights in
    admission order, and the tag of the last start (where a share rejoins when nobody waits)."""

    def __init__(self, order: SortedKeyList[Flight]) -> None:
        self._order = order  # the line's waiting flights, sorted by (rank, tag, number)
        self.counters: dict[str, float] = {}
        self.waiting: dict[str, dict[str, Flight]] = {}
        self.clock = 0.0
        self._starts = 0

    def tag(self, flight: Flight, expected: float) -> float:
        """The tag of ``flight`` joining now: one call after its share's last waiting flight, else
        its share's counter lifted to just after the least tag waiting in its tier (it came later;
        nobody waiting: to the clock)."""
        assert flight.share is not None
        mine = self.waiting.setdefault(flight.share, {})
        if mine:
            tag = next(reversed(mine.values())).order[1] + expected
        else:
            front = self._order.bisect_key_left((flight.rank,))
            tier = self._order[front].order if front < len(self._order) else None
            floor = tier[1] + 1 if tier is not None and tier[0] == flight.rank else self.clock
            tag = max(self.counters.get(flight.share, 0.0), floor)
            self.counters[flight.share] = tag
        mine[flight.id] = flight
        return tag

    def left(self, flight: Flight) -> None:
        assert flight.share is not None
        mine = self.waiting.get(flight.share)
        if mine is not None:
            mine.pop(flight.id, None)
            if not mine:
                del self.waiting[flight.share]

    def started(self, flight: Flight, expected: float) -> None:
        """``flight`` starts: its share is charged ``expected`` (corrected by :meth:`ended`)."""
        assert flight.share is not None
        tag = flight.order[1]
        self.counters[flight.share] = max(self.counters.get(flight.share, 0.0), tag) + expected
        self.clock, flight.charged = tag, expected
        self._starts += 1
        if self._starts % PRUNE_EVERY == 0:  # a share idle and behind the clock would rejoin at it anyway
            for share in [s for s, c in self.counters.items() if c <= self.clock and s not in self.waiting]:
                del self.counters[share]

    def ended(self, flight: Flight, service: float) -> bool:
        """``flight``'s call cost ``service``: its share's counter takes the difference from what its
        start charged, and its waiting flights move by as much, keeping their order; True if any moved."""
        assert flight.share is not None and flight.charged is not None
        delta, flight.charged = service - flight.charged, None
        self.counters[flight.share] = self.counters.get(flight.share, 0.0) + delta
        moving = list(self.waiting.get(flight.share, {}).values()) if delta else []
        for waiting in moving:
            del self._order[self._order.bisect_key_left(waiting.order)]
            rank, tag, number = waiting.order
            waiting.order = (rank, max(0.0, tag + delta), number)
            self._order.add(waiting)
        return bool(moving)
