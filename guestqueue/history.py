"""Counters, averages and the recent requests, for status pages and diagnostics."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from typing import Any

from . import clock
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

    # -- a RequestListener (service.py) ----------------------------------------------

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


class Registry:
    """Live tickets by id, plus the most recent finished ones (bounded).

    A finished ticket keeps its whole event log for ``replay_s`` (a guest who
    reconnects just after the end gets the answer again), then only its
    terminal event. Bounded by count too: at most ``keep_finished`` full logs,
    however fast requests finish, since beyond that count they cannot be looked up.
    """

    def __init__(self, history_size: int, keep_finished: int = 1000, replay_s: float = 60.0) -> None:
        self._live: dict[str, Ticket] = {}
        self._finished: OrderedDict[str, Ticket] = OrderedDict()
        self._keep_finished = max(keep_finished, history_size)
        self._recent: deque[Ticket] = deque(maxlen=history_size)
        self._replay_s = replay_s
        self._full_logs: deque[tuple[float, Ticket]] = deque()  # (finished at, ticket), oldest first
        # (client, Idempotency-Key) -> ticket, while the ticket is live or its log replayable.
        self._by_key: dict[tuple[str, str], Ticket] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, ticket: Ticket) -> bool:
        return ticket.id in self._live or ticket.id in self._finished

    def add(self, ticket: Ticket) -> None:
        self._live[ticket.id] = ticket
        if ticket.idempotency_key is not None:
            self._by_key[(ticket.client, ticket.idempotency_key)] = ticket
        if self._recent.maxlen:
            self._recent.append(ticket)

    def forget(self, ticket: Ticket) -> None:
        """A live ticket another instance took over: it is no longer ours to look up."""
        self._live.pop(ticket.id, None)
        if ticket.idempotency_key is not None:
            self._by_key.pop((ticket.client, ticket.idempotency_key), None)

    def get(self, request_id: str) -> Ticket | None:
        return self._live.get(request_id) or self._finished.get(request_id)

    def by_key(self, client: str, idempotency_key: str) -> Ticket | None:
        """The request this client sent with this Idempotency-Key, if still live or replayable."""
        return self._by_key.get((client, idempotency_key))

    def finished(self, ticket: Ticket) -> None:
        self._live.pop(ticket.id, None)
        self._finished[ticket.id] = ticket
        while len(self._finished) > self._keep_finished:
            self._finished.popitem(last=False)
        self._full_logs.append((clock.monotonic(), ticket))
        while len(self._full_logs) > self._keep_finished:
            self._forget_replay(self._full_logs.popleft()[1])

    def compact_expired(self, now: float) -> None:
        """Keep only the terminal event of tickets that finished more than ``replay_s`` ago."""
        logs = self._full_logs
        while logs and now - logs[0][0] >= self._replay_s:
            self._forget_replay(logs.popleft()[1])

    def _forget_replay(self, ticket: Ticket) -> None:
        ticket.events.compact()
        if ticket.idempotency_key is not None:
            key = (ticket.client, ticket.idempotency_key)
            if self._by_key.get(key) is ticket:
                del self._by_key[key]

    @property
    def full_logs(self) -> int:
        return len(self._full_logs)

    def live(self) -> list[Ticket]:
        return list(self._live.values())

    def held(self) -> list[Ticket]:
        """Every ticket this instance can answer for: live, then the finished it keeps."""
        return [*self._live.values(), *self._finished.values()]

    def recent(self) -> list[dict[str, Any]]:
        """The last ``history_size`` requests, newest first."""
        return [ticket.summary() for ticket in reversed(self._recent)]
