"""Running a line against simulated guests and upstream on looptime's virtual clock, and what came of it."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from ..config import ENV_NAMES, parse_value
from ..core import QuietListener, RequestListener
from ..errors import Rejected
from ..events import QUEUED
from ..linespec import LineSpec
from ..runtime import Queue, open_queue
from ..service import QueueService
from ..tickets import Status, Ticket
from ..upstream import Chunk, WorkflowRequest
from ..waitingroom.sessions import Sessions
from .scenario import Guest, Scenario, SimulationError, quantile
from .shares import answer_chars, figures

# The settings a flag may change for a what-if run (each named as serve's flag), and their types.
WHAT_IF = {"max_concurrent_requests": int, "upstream_interval_s": float, "max_queue_size": int}


SETTLE_MARGIN_S = 600.0  # beyond the longest a guest can last: then the run is stuck, not slow


class SimulatedUpstream:
    """The upstream interface (upstream/base.py): each call sleeps its guest's drawn duration."""

    kind = "simulated"

    def __init__(self, calls_s: dict[str, float]) -> None:
        self.calls_s = calls_s  # by question: every simulated guest asks its own

    async def stream(self, request: WorkflowRequest) -> AsyncIterator[Chunk]:
        call_s = self.calls_s[request.query]
        await asyncio.sleep(call_s)
        yield Chunk("x" * max(1, answer_chars(call_s)))  # as long as the call was: its service


class _Recorder:
    """Hears every admission, start and end as the request log does (a RequestListener), to
    sample the line's length and to know when the last guest is done."""

    def __init__(self, queue_size: Callable[[], int], started: float) -> None:
        self._queue_size = queue_size
        self._t0 = started
        self.samples: list[tuple[float, int]] = [(0.0, 0)]  # (virtual seconds, guests waiting)
        self.open = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def _sample(self) -> None:
        self.samples.append((asyncio.get_running_loop().time() - self._t0, self._queue_size()))

    def admitted(self, ticket: Ticket) -> None:
        self.open += 1
        self.idle.clear()
        self._sample()

    def started(self, ticket: Ticket) -> None:
        self._sample()

    def ended(self, ticket: Ticket) -> None:
        self.open -= 1
        self._sample()
        if self.open == 0:
            self.idle.set()

    def rejected(self, client: str, query: str, code: str) -> None:
        return None


class _Visitors(QuietListener):
    """An admission line's guests once admitted: each stays its drawn duration in the protected
    application, then completes its session (unless its token expired first)."""

    def __init__(self, sessions: Callable[[], Sessions | None], stay_s: dict[str, float]) -> None:
        self._sessions, self._stay_s = sessions, stay_s
        self._leaving: set[asyncio.Future[bool]] = set()

    def ended(self, ticket: Ticket) -> None:
        if ticket.status is Status.ADMITTED:
            asyncio.get_running_loop().call_later(self._stay_s[ticket.query], self._leave, ticket.id)

    def _leave(self, request_id: str) -> None:
        sessions = self._sessions()
        assert sessions is not None
        task = asyncio.ensure_future(sessions.complete(request_id))
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)


@dataclass
class Result:
    spec: LineSpec
    scenario: Scenario
    guests: list[Guest]
    samples: list[tuple[float, int]]
    simulated_s: float
    real_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        settings, scenario = self.spec.settings, self.scenario
        waits = sorted(g.wait_s for g in self.guests if g.wait_s is not None)
        errors = [g.eta_s - g.wait_s for g in self.guests if g.eta_s is not None and g.wait_s is not None]
        refused = Counter(g.refused for g in self.guests if g.refused)
        outcomes = Counter(g.outcome for g in self.guests if g.ticket is not None)
        # Answered, or (a waiting room) let in.
        served = outcomes.pop(Status.COMPLETED.value, 0) + outcomes.pop(Status.ADMITTED.value, 0)
        return {
            "line": self.spec.name,
            "settings": {
                "max_concurrent_requests": settings.max_concurrent_requests,
                "upstream_interval_sec": settings.upstream_interval_s,
                "max_queue_size": settings.max_queue_size,
                "max_wait_sec": settings.max_wait_s,
                "request_timeout_sec": settings.request_timeout_s,
                "release_per_minute": self.spec.release_per_minute,
                "max_predicted_wait_sec": self.spec.max_predicted_wait_s,
            },
            "scenario": {
                "guests": scenario.guests,
                "arrival_rate_per_sec": scenario.arrivals_per_s,
                "duration_dist": str(scenario.durations),
                "seed": scenario.seed,
                "fairness": self.spec.fairness,
                "shares": str(scenario.shares) if scenario.shares is not None else None,
            },
            "guests": len(self.guests),
            "admitted": sum(1 for g in self.guests if g.ticket is not None),
            "served": served,
            "refused": sum(refused.values()),
            "refused_by_reason": dict(sorted(refused.items())),
            "ended_otherwise": dict(sorted(outcomes.items())),
            "wait_sec": {
                "p50": quantile(waits, 0.5),
                "p90": quantile(waits, 0.9),
                "p99": quantile(waits, 0.99),
                "max": _round(waits[-1]) if waits else None,
            },
            "throughput_per_min": round(served / self.simulated_s * 60, 2) if self.simulated_s > 0 else 0.0,
            "eta_error_sec": {
                "median_abs": quantile(sorted(abs(e) for e in errors), 0.5),
                "p90_abs": quantile(sorted(abs(e) for e in errors), 0.9),
                "mean_signed": _round(statistics.fmean(errors)) if errors else None,
            },
            "eta_calibration": calibration(self.guests),
            "shares": figures(self.guests, settings.max_concurrent_requests) if scenario.shares is not None else None,
            "queue_peak": max(size for _, size in self.samples),
            "simulated_sec": _round(self.simulated_s),
            "real_sec": round(self.real_s, 2),
        }


def calibration(guests: list[Guest]) -> dict[str, Any]:
    """How the waits guests were told on joining held: the share that started inside their p10-p90
    range, and the median absolute error relative to the actual wait (at least 1 s: a guest that
    hardly waited says little), of the guests who waited for a start."""
    told = [g for g in guests if g.eta_s is not None and g.eta_range_s is not None and g.wait_s is not None]
    if not told:
        return {"guests": 0, "inside_range_pct": None, "median_abs_error_pct": None, "mean_signed_error_pct": None}
    inside = sum(
        1 for g in told if g.eta_range_s is not None and g.eta_range_s[0] <= (g.wait_s or 0) <= g.eta_range_s[1]
    )
    relative = [((g.eta_s or 0) - (g.wait_s or 0)) / max(g.wait_s or 0, 1.0) for g in told]
    return {
        "guests": len(told),
        "inside_range_pct": round(100 * inside / len(told), 1),
        "median_abs_error_pct": round(100 * statistics.median(abs(r) for r in relative), 1),
        "mean_signed_error_pct": round(100 * statistics.fmean(relative), 1),
    }


def _round(seconds: float) -> float:
    return round(seconds, 1)


def what_if(spec: LineSpec, **changes: str | None) -> LineSpec:
    """The line as ``simulate`` runs it: in this process (no Redis, no log), with the what-if flags."""
    values: dict[str, Any] = {"redis_url": "", "workers": 1, "db_path": ""}
    for name, raw in changes.items():
        if raw is not None:
            values[name] = parse_value(ENV_NAMES[name], raw, WHAT_IF[name])
    return dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, **values))


def simulate(spec: LineSpec, scenario: Scenario) -> Result:
    """Run ``scenario`` against the line on a virtual clock; returns when every guest is done."""
    # Here, not at the top: looptime imports pytest (0.1 s), which every `guestqueue serve` would
    # pay, as the command line knows the simulate command.
    import looptime

    began = time.perf_counter()
    # No thread or socket takes part, so the clock may jump as soon as nothing is ready to run
    # (looptime's default first spins 42 idle rounds, for them): half the real time.
    with asyncio.Runner(loop_factory=lambda: looptime.new_event_loop(start=0.0, noop_cycles=0)) as runner:
        result = runner.run(_run(spec, scenario))
    result.real_s = time.perf_counter() - began
    return result


async def _run(spec: LineSpec, scenario: Scenario) -> Result:
    rng = random.Random(scenario.seed)
    guests: list[Guest] = []
    arrival = 0.0
    for _ in range(scenario.guests):
        arrival += rng.expovariate(scenario.arrivals_per_s)  # Poisson arrivals: exponential gaps
        guest = Guest(arrival, scenario.durations.draw(rng))
        if scenario.shares is not None:
            guest.share = scenario.shares.draw(rng)
        guests.append(guest)
    upstream = SimulatedUpstream({_question(i): g.call_s for i, g in enumerate(guests)})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    settings = spec.settings
    async with AsyncExitStack() as stack:
        # The listeners are fixed before the line starts; what they read of it exists once it has.
        queue: Queue | None = None
        recorder = _Recorder(lambda: queue.queue_size() if queue is not None else 0, t0)
        listeners: list[RequestListener] = [recorder]
        if spec.admission is not None:  # a waiting room: the drawn duration is a visit's length
            listeners.append(_Visitors(lambda: queue.sessions if queue is not None else None, upstream.calls_s))
        queue = await open_queue(stack, settings, upstream, None, spec=spec, listeners=listeners)
        service = queue.service
        # Nobody lasts longer than its wait limit plus its call's limit (retries never happen here).
        horizon_s = arrival + settings.max_wait_s + settings.request_timeout_s + SETTLE_MARGIN_S
        try:
            async with asyncio.timeout(horizon_s):
                for i, guest in enumerate(guests):
                    await asyncio.sleep(max(0.0, t0 + guest.arrival_s - loop.time()))
                    await _arrive(service, i, guest)
                await recorder.idle.wait()
        except TimeoutError:
            raise SimulationError(f"the line had not emptied after {horizon_s:.0f} virtual seconds") from None
        ended = loop.time() - t0
    for guest in guests:
        if (ticket := guest.ticket) is not None:
            if ticket.started_mono is not None and ticket.wait_ms is not None:
                guest.wait_s = ticket.wait_ms / 1000
            completed = ticket.status in (Status.COMPLETED, Status.ADMITTED)
            guest.outcome = ticket.status.value if completed else ticket.error_code or ticket.status.value
    return Result(spec, scenario, guests, recorder.samples, ended)


async def _arrive(service: QueueService, number: int, guest: Guest) -> None:
    try:
        # Its own client (GUEST_MAX_PER_CLIENT counts per guest) and its own question (no cache hit).
        ticket = await service.submit(_question(number), client=f"simulated-{number}", share=guest.share)
    except Rejected as exc:
        guest.refused = exc.code
        return
    guest.ticket = ticket
    heard = [event for event in ticket.events.after(0) if event.name == QUEUED]
    if heard:
        guest.eta_s = float(heard[0].data["estimated_wait_sec"])
        low, high = heard[0].data["estimated_wait_range_sec"]
        guest.eta_range_s = (float(low), float(high))


def _question(number: int) -> str:
    return f"simulated question {number}"
