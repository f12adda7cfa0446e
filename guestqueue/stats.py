"""Totals by outcome and moving averages: the numbers behind ``/queue/status``."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from .tickets import Status, Ticket

AVERAGE_WINDOW = 100
ADMISSION_REJECTIONS = ("queue_full", "client_limit", "shutting_down")


class Stats:
    """Totals by outcome and moving averages; the numbers behind ``/queue/status``."""

    def __init__(self) -> None:
        self.started_mono = time.monotonic()
        self.total_requests = 0
        self.rejections: Counter[str] = Counter()  # by error code
        self.cache_hits = 0
        self.shared_answers = 0
        self.outcomes = dict.fromkeys((s for s in Status if s.terminal), 0)
        self._waits_ms: deque[float] = deque(maxlen=AVERAGE_WINDOW)
        self._processing_ms: deque[float] = deque(maxlen=AVERAGE_WINDOW)

    def __repr__(self) -> str:
        return f"Stats(total={self.total_requests}, rejections={dict(self.rejections)}, outcomes={self.outcomes})"

    @property
    def rejected_requests(self) -> int:
        """Well-formed requests that were not admitted (line full, client limit, shutting down)."""
        return sum(self.rejections[code] for code in ADMISSION_REJECTIONS)

    # -- a RequestListener (core.py) ----------------------------------------------

    def admitted(self, ticket: Ticket) -> None:
        self.total_requests += 1
        if ticket.from_cache:
            self.cache_hits += 1
        elif ticket.cached:
            self.shared_answers += 1

    def started(self, ticket: Ticket) -> None:
        return None

    def rejected(self, client: str, query: str, code: str) -> None:
        self.rejections[code] += 1

    def ended(self, ticket: Ticket) -> None:
        self.outcomes[ticket.status] += 1
        if ticket.cached:
            return
        if ticket.wait_ms is not None:
            self._waits_ms.append(ticket.wait_ms)
        if ticket.duration_ms is not None:
            self._processing_ms.append(ticket.duration_ms)

    def set_average(self, kind: str, value_ms: float) -> None:
        """Averages computed elsewhere (every instance's, lines/redis/tally.py): ``wait`` or ``processing``."""
        values = self._waits_ms if kind == "wait" else self._processing_ms
        values.clear()
        values.append(value_ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_requests": self.total_requests,
            "completed_requests": self.outcomes[Status.COMPLETED],
            "failed_requests": self.outcomes[Status.FAILED],
            "timeout_requests": self.outcomes[Status.TIMEOUT],
            "rejected_requests": self.rejected_requests,
            "cancelled_requests": self.outcomes[Status.CANCELLED],
            "cache_hits": self.cache_hits,
            "avg_wait_ms": _mean(self._waits_ms),
            "avg_processing_ms": _mean(self._processing_ms),
            "uptime_sec": round(time.monotonic() - self.started_mono, 1),
        }


def _mean(values: deque[float]) -> float:
    return round(sum(values) / len(values), 1) if values else 0.0
