"""One guest request (a ticket) and one upstream call (a flight).

A ticket's state machine: ``queued → processing → completed | failed |
timeout | cancelled`` (``admitted`` on an admission line), plus ``queued → cancelled`` (the guest left or waited
too long) and ``queued → failed`` (shutdown). A ticket ends exactly once:
:meth:`Ticket.end` refuses a second ending, so racing causes (timeout vs.
cancel vs. done) cannot produce two terminal events.

A flight is what waits in line and runs upstream. Usually it carries one
ticket; identical questions asked while one is in flight ride along on it
(single-flight), so one upstream call answers them all. A guest who leaves
takes only its own ticket off the flight; the flight leaves the line, or its
upstream call is cancelled, once nobody rides it any more.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import clock
from .events import EventLog, SharedAnswer
from .upstream.base import WorkflowRequest


class Status(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    ADMITTED = "admitted"  # an admission line's guest got its token (waitingroom/sessions.py)

    @property
    def terminal(self) -> bool:
        return self not in (Status.QUEUED, Status.PROCESSING)


def new_request_id() -> str:
    # 128 random bits: the id is the only credential needed to resume or cancel.
    return secrets.token_hex(16)


@dataclass(eq=False, slots=True)
class Ticket:
    query: str
    client: str
    parameters: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    idempotency_key: str | None = None  # the client's name for this request, to ask again safely
    max_wait_s: float | None = None  # the guest's own limit in line (max_wait_sec): then `timeout` code `deadline`
    id: str = field(default_factory=new_request_id)
    status: Status = Status.QUEUED
    created_at: float = field(default_factory=time.time)
    created_mono: float = field(default_factory=clock.monotonic)
    started_at: float | None = None
    started_mono: float | None = None
    finished_at: float | None = None
    wait_ms: float | None = None
    duration_ms: float | None = None
    error: str | None = None  # the guest-safe message: what summary() and /queue/history show
    error_code: str | None = None
    error_detail: str | None = None  # what went wrong upstream: the server log and the request log only
    answer_parts: list[str] = field(default_factory=list)
    suggested_questions: list[str] = field(default_factory=list)
    cached: bool = False  # answered without an upstream call of its own
    from_cache: bool = False  # ... because the answer cache had it
    predicted: tuple[float, float, float] | None = None  # its first estimate: wait, p10, p90 (eta.py)
    events: EventLog = field(default_factory=EventLog)
    flight: Flight | None = None
    subscribers: int = 0
    moved: bool = False  # another instance holds it now (a shared line): nothing here may end it
    drop_reason: str | None = None  # why its last stream ended, for the row if the guest never returns
    grace_timer: asyncio.TimerHandle | None = None
    expiry_timer: asyncio.TimerHandle | None = None
    recorded: asyncio.Future[None] | None = None  # a shared line: its first record's write to Redis
    ending_written: asyncio.Future[None] | None = None  # a shared line: its ending's write to Redis

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts)

    @property
    def position(self) -> int:
        """1 = next to start; 0 once started or ended."""
        if self.status is Status.QUEUED and self.flight is not None:
            return self.flight.position
        return 0

    @property
    def done(self) -> bool:
        return self.status.terminal

    def start(self) -> None:
        self.status = Status.PROCESSING
        self.started_at = time.time()
        self.started_mono = clock.monotonic()
        self.wait_ms = (self.started_mono - self.created_mono) * 1000

    def end(
        self,
        status: Status,
        *,
        error: str | None = None,
        error_code: str | None = None,
        error_detail: str | None = None,
    ) -> bool:
        """Move to a terminal state; False (and no change) if the ticket had already ended."""
        if self.done:
            return False
        now = clock.monotonic()
        self.status = status
        self.finished_at = time.time()
        self.error, self.error_code, self.error_detail = error, error_code, error_detail
        if self.started_mono is None:
            self.wait_ms = (now - self.created_mono) * 1000
        else:
            self.duration_ms = (now - self.started_mono) * 1000
        for timer in (self.grace_timer, self.expiry_timer):
            if timer is not None:
                timer.cancel()
        self.grace_timer = self.expiry_timer = None
        return True

    def summary(self) -> dict[str, Any]:
        """The public view of DESIGN.md's ``/queue/request/{id}``."""
        out: dict[str, Any] = {"request_id": self.id, "status": self.status.value, "created_at": self.created_at}
        if self.status is Status.QUEUED:
            out["queue_position"] = self.position
        for key in ("started_at", "finished_at", "wait_ms", "duration_ms", "error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 1) if key.endswith("_ms") else value
        if self.error_code is not None:
            out["error_code"] = self.error_code
        if self.cached:
            out["cached"] = True
        return out

    def __repr__(self) -> str:
        return f"Ticket(id={self.id[:8]}…, status={self.status.value}, position={self.position})"


def new_flight_id() -> str:
    return secrets.token_hex(8)


@dataclass(eq=False, slots=True)
class Flight:
    """One upstream call and the tickets waiting for its answer.

    ``request`` is what the upstream is asked; with a shared line, any instance
    may run the flight, so it holds everything the call needs. ``tickets`` are
    this instance's guests riding it (none, when another instance admitted it).
    """

    key: str | None
    tickets: list[Ticket]
    request: WorkflowRequest
    id: str = field(default_factory=new_flight_id)
    position: int = 0
    reported_position: int = 0  # the place its guests last heard
    started_mono: float | None = None
    finished: bool = False
    back_in_line: bool = False  # its call stopped before saying anything: it goes back to the front
    joined_mono: float = field(default_factory=clock.monotonic)  # when the line had it (joined, or adopted)
    rank: int = 0  # its priority tier: 0 = the highest (linespec.LineSpec.tier_rank)
    share: str | None = None  # on a fair line, whose share it counts in (fairness.py); None: FIFO
    charged: float | None = None  # the service its start charged its share (corrected when it ends)
    tokens: int | None = None  # its answer's tokens, if the upstream reported its usage
    order: tuple[int, float, int] = (0, 0.0, 0)  # the memory line's sort key: (rank, fair tag, number)
    number: int = 0  # the shared line's ticket number (admission order); 0 = not known here
    answer_parts: list[str] = field(default_factory=list)
    suggested_questions: list[str] = field(default_factory=list)
    job: asyncio.Task[None] | None = None
    shared: SharedAnswer = field(init=False)  # answer_parts, read by every rider's event log

    def __post_init__(self) -> None:
        self.shared = SharedAnswer(self.answer_parts)

    @property
    def started(self) -> bool:
        return self.started_mono is not None

    def __repr__(self) -> str:
        return f"Flight(id={self.id}, tickets={len(self.tickets)}, position={self.position})"
