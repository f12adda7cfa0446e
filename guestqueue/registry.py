"""This instance's requests: the live ones by id (and how many each client holds), the recent
finished ones (bounded), and the Idempotency-Keys that lead to them."""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from typing import Any

from . import clock
from .tickets import Ticket


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
        self._per_client: Counter[str] = Counter()  # live tickets by client: its share in use

    def held_by(self, client: str) -> int:
        """How many live requests ``client`` has here (its questions in progress)."""
        return self._per_client[client]

    @property
    def clients(self) -> set[str]:
        return set(self._per_client)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, ticket: Ticket) -> bool:
        return ticket.id in self._live or ticket.id in self._finished

    def add(self, ticket: Ticket) -> None:
        if ticket.id not in self._live:
            self._per_client[ticket.client] += 1
        self._live[ticket.id] = ticket
        if ticket.idempotency_key is not None:
            self._by_key[(ticket.client, ticket.idempotency_key)] = ticket
        if self._recent.maxlen:
            self._recent.append(ticket)

    def forget(self, ticket: Ticket) -> None:
        """A live ticket another instance took over: it is no longer ours to look up."""
        self._drop_live(ticket)
        if ticket.idempotency_key is not None:
            self._by_key.pop((ticket.client, ticket.idempotency_key), None)

    def get(self, request_id: str) -> Ticket | None:
        return self._live.get(request_id) or self._finished.get(request_id)

    def by_key(self, client: str, idempotency_key: str) -> Ticket | None:
        """The request this client sent with this Idempotency-Key, if still live or replayable."""
        return self._by_key.get((client, idempotency_key))

    def finished(self, ticket: Ticket) -> None:
        self._drop_live(ticket)
        self._finished[ticket.id] = ticket
        while len(self._finished) > self._keep_finished:
            self._finished.popitem(last=False)
        self._full_logs.append((clock.monotonic(), ticket))
        while len(self._full_logs) > self._keep_finished:
            self._forget_replay(self._full_logs.popleft()[1])

    def _drop_live(self, ticket: Ticket) -> None:
        if self._live.pop(ticket.id, None) is not None:
            self._per_client[ticket.client] -= 1
            if self._per_client[ticket.client] <= 0:
                del self._per_client[ticket.client]

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
