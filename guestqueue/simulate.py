"""``guestqueue simulate``: a line's real admission, pacing and wait estimates against a simulated
upstream, on a virtual clock, to choose its limits before going live::

    guestqueue simulate --line guest --guests 500 --arrival-rate 5/s --duration-dist lognormal:2,0.5

What is real: the in-memory line, the service (admission and its refusals, the
wait limit), the worker pool, the pacing limiter and the wait estimator, built
by :func:`~guestqueue.runtime.open_queue` from the line's settings as
``guestqueue serve`` reads them. What is simulated: the guests (Poisson
arrivals, each asking its own question and staying connected until its end),
and the upstream, whose call sleeps for a drawn duration and answers one
chunk. No Redis, no HTTP, no request log.

The event loop is looptime's: when nothing is ready to run, its clock jumps to
the next timer instead of sleeping, so an hour of line runs in seconds. Every
duration guestqueue measures is read from the loop's clock (clock.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import looptime

from .config import ENV_NAMES, Settings, SettingsError, parse_value
from .core import QuietListener, RequestListener
from .errors import Rejected
from .events import QUEUED
from .linespec import DEFAULT_LINE, LineSpec, load_lines
from .runtime import Queue, open_queue
from .service import QueueService
from .tickets import Status, Ticket
from .upstream import Chunk, WorkflowRequest
from .waitingroom.sessions import Sessions

RATE_UNITS = {"s": 1.0, "sec": 1.0, "min": 1 / 60, "m": 1 / 60}
# The settings a flag may change for a what-if run (each named as serve's flag), and their types.
WHAT_IF = {"max_concurrent_requests": int, "upstream_interval_s": float, "max_queue_size": int}
SETTLE_MARGIN_S = 600.0  # beyond the longest a guest can last: then the run is stuck, not slow
PLOT_MISSING = "--plot needs matplotlib: pip install 'guestqueue[plot]'"


class SimulationError(ValueError):
    """A scenario we cannot run; the message names the flag and the value."""


@dataclass(frozen=True)
class Durations:
    """How long one upstream call takes: ``lognormal:MU,SIGMA`` (seconds = exp(N(MU, SIGMA))),
    ``fixed:S`` or ``exponential:MEAN``."""

    kind: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> Durations:
        kind, _, rest = text.partition(":")
        arity = {"lognormal": 2, "fixed": 1, "exponential": 1}.get(kind)
        try:
            params = tuple(float(p) for p in rest.split(",")) if rest else ()
        except ValueError:
            params = ()
        if arity is None or len(params) != arity or not all(math.isfinite(p) for p in params):
            raise SimulationError(
                f"--duration-dist={text!r}: use lognormal:MU,SIGMA, fixed:SECONDS or exponential:MEAN"
            )
        if (
            (kind == "lognormal" and params[1] < 0)
            or (kind == "fixed" and params[0] < 0)
            or (kind == "exponential" and params[0] <= 0)
        ):
            raise SimulationError(f"--duration-dist={text!r}: a spread or duration must not be negative (a mean > 0)")
        return cls(kind, params)

    def draw(self, rng: random.Random) -> float:
        if self.kind == "lognormal":
            return rng.lognormvariate(*self.params)
        if self.kind == "exponential":
            return rng.expovariate(1 / self.params[0])
        return self.params[0]

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(f'{p:g}' for p in self.params)}"


def parse_rate(text: str) -> float:
    """Guests per second from ``R/s`` or ``R/min``."""
    number, _, unit = text.partition("/")
    try:
        rate = float(number) * RATE_UNITS[unit.strip()]
    except (ValueError, KeyError):
        raise SimulationError(f"--arrival-rate={text!r}: use R/s or R/min, e.g. 5/s or 30/min") from None
    if not 0 < rate < math.inf:
        raise SimulationError(f"--arrival-rate={text!r}: must be a finite number above 0")
    return rate


@dataclass(frozen=True)
class Scenario:
    guests: int
    arrivals_per_s: float
    durations: Durations
    seed: int = 1


@dataclass(slots=True)
class Guest:
    arrival_s: float
    call_s: float  # how long its upstream call takes
    eta_s: float | None = None  # the estimated_wait_sec of its first `queued` event
    refused: str | None = None  # the code of the 429/503 it got instead
    ticket: Ticket | None = None
    wait_s: float | None = None  # from joining to its call's start, as the service measured it
    outcome: str = ""  # `completed`, or the code it ended with (`wait_timeout`, `timeout`, ...)


class SimulatedUpstream:
    """The upstream interface (upstream/base.py): each call sleeps its guest's drawn duration."""

    kind = "simulated"

    def __init__(self, calls_s: dict[str, float]) -> None:
        self.calls_s = calls_s  # by question: every simulated guest asks its own

    async def stream(self, request: WorkflowRequest) -> AsyncIterator[Chunk]:
        await asyncio.sleep(self.calls_s[request.query])
        yield Chunk("simulated answer")


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
            },
            "guests": len(self.guests),
            "admitted": sum(1 for g in self.guests if g.ticket is not None),
            "served": served,
            "refused": sum(refused.values()),
            "refused_by_reason": dict(sorted(refused.items())),
            "ended_otherwise": dict(sorted(outcomes.items())),
            "wait_sec": {
                "p50": _quantile(waits, 0.5),
                "p90": _quantile(waits, 0.9),
                "p99": _quantile(waits, 0.99),
                "max": _round(waits[-1]) if waits else None,
            },
            "throughput_per_min": round(served / self.simulated_s * 60, 2) if self.simulated_s > 0 else 0.0,
            "eta_error_sec": {
                "median_abs": _quantile(sorted(abs(e) for e in errors), 0.5),
                "p90_abs": _quantile(sorted(abs(e) for e in errors), 0.9),
                "mean_signed": _round(statistics.fmean(errors)) if errors else None,
            },
            "queue_peak": max(size for _, size in self.samples),
            "simulated_sec": _round(self.simulated_s),
            "real_sec": round(self.real_s, 2),
        }


def _quantile(ordered: list[float], q: float) -> float | None:
    """Linear between the closest ranks (numpy's default); None without data."""
    if not ordered:
        return None
    at = (len(ordered) - 1) * q
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return _round(ordered[low] + (ordered[high] - ordered[low]) * (at - low))


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
        guests.append(Guest(arrival, scenario.durations.draw(rng)))
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
        ticket = await service.submit(_question(number), client=f"simulated-{number}")
    except Rejected as exc:
        guest.refused = exc.code
        return
    guest.ticket = ticket
    heard = [event for event in ticket.events.after(0) if event.name == QUEUED]
    if heard:
        guest.eta_s = float(heard[0].data["estimated_wait_sec"])


def _question(number: int) -> str:
    return f"simulated question {number}"


def table(summary: dict[str, Any]) -> str:
    """The summary as plain text, one figure a line."""
    s, sc = summary["settings"], summary["scenario"]
    wait, eta = summary["wait_sec"], summary["eta_error_sec"]

    def reasons(counts: dict[str, int]) -> str:
        return f"  ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""

    def sec(value: float | None, sign: bool = False) -> str:
        return "-" if value is None else (f"{value:+.1f}" if sign else f"{value:.1f}")

    rows = [
        (
            "line",
            f"{summary['line']}: {s['max_concurrent_requests']} at once, {s['upstream_interval_sec']:g} s "
            f"between starts, {s['max_queue_size']} waiting at most, wait limit {s['max_wait_sec']:g} s",
        ),
        (
            "scenario",
            f"{sc['guests']} guests at {sc['arrival_rate_per_sec']:g}/s, calls {sc['duration_dist']}, "
            f"seed {sc['seed']}",
        ),
        ("admitted", str(summary["admitted"])),
        ("served", str(summary["served"])),
        ("refused", f"{summary['refused']}{reasons(summary['refused_by_reason'])}"),
        ("ended otherwise", f"{sum(summary['ended_otherwise'].values())}{reasons(summary['ended_otherwise'])}"),
        ("wait p50/p90/p99/max", " / ".join(sec(wait[k]) for k in ("p50", "p90", "p99", "max")) + " s"),
        ("throughput", f"{summary['throughput_per_min']:.2f} answers/min"),
        (
            "ETA error",
            f"median {sec(eta['median_abs'])} s, p90 {sec(eta['p90_abs'])} s, "
            f"mean {sec(eta['mean_signed'], sign=True)} s (estimate - actual)",
        ),
        ("queue peak", f"{summary['queue_peak']} waiting"),
        ("simulated", f"{summary['simulated_sec']:.0f} s ({summary['simulated_sec'] / 3600:.2f} h)"),
        ("real", f"{summary['real_sec']:.2f} s"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def figure_class() -> Any:
    """matplotlib's Figure, or SimulationError: matplotlib is an optional extra (``[plot]``), and
    importing it takes half a second that ``guestqueue serve`` must not pay."""
    try:
        return importlib.import_module("matplotlib.figure").Figure
    except ImportError:
        raise SimulationError(PLOT_MISSING) from None


def plot(result: Result, path: str, figure: Any) -> None:
    """Wait over arrival time, and the line's length over time, in one PNG."""
    fig = figure(figsize=(9, 6), layout="constrained")
    waits, sizes = fig.subplots(2, 1, sharex=True)
    served = [g for g in result.guests if g.wait_s is not None]
    waits.scatter([g.arrival_s for g in served], [g.wait_s for g in served], s=4, label="started (wait)")
    refused = [g.arrival_s for g in result.guests if g.refused]
    if refused:
        waits.scatter(refused, [0.0] * len(refused), s=4, marker="x", color="tab:red", label="refused")
    waits.set_ylabel("wait (s)")
    waits.legend(loc="upper left")
    sizes.step([t for t, _ in result.samples], [n for _, n in result.samples], where="post")
    sizes.set_ylabel("guests waiting")
    sizes.set_xlabel("time (s, virtual)")
    fig.suptitle(f"guestqueue simulate: line {result.spec.name}, {result.scenario.guests} guests")
    fig.savefig(path, dpi=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file of lines [GUEST_CONFIG]")
    parser.add_argument("--line", default=DEFAULT_LINE, help=f"the line to simulate (default {DEFAULT_LINE})")
    parser.add_argument("--guests", default="500", help="guests who arrive (default 500)")
    parser.add_argument("--arrival-rate", default="1/s", help="Poisson arrivals, R/s or R/min (default 1/s)")
    parser.add_argument(
        "--duration-dist",
        default="lognormal:2,0.5",
        help="upstream call seconds: lognormal:MU,SIGMA | fixed:S | exponential:MEAN (default lognormal:2,0.5)",
    )
    parser.add_argument("--seed", default="1", help="random seed (default 1)")
    for name in WHAT_IF:
        flag = "--" + ENV_NAMES[name].removeprefix("GUEST_").lower().replace("_", "-")
        parser.add_argument(flag, dest=name, metavar="VALUE", help=f"what if the line had this {ENV_NAMES[name]}")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--plot", metavar="FILE.png", help="draw waits and the line's length (needs matplotlib)")


def main(args: argparse.Namespace) -> int:
    """``guestqueue simulate``: bad input is one line on stderr and exit code 2."""
    try:
        figure = figure_class() if args.plot else None
        spec, scenario = _load(args)
        result = simulate(spec, scenario)
        summary = result.summary()
        if figure is not None:
            plot(result, args.plot, figure)
    except (SimulationError, SettingsError) as exc:
        print(f"guestqueue: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the plot's file
        print(f"guestqueue: error: --plot={args.plot!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else table(summary))
    return 0


# A simulation signs no token: a waiting room only needs some key to be read (never used).
UNSIGNED = "guestqueue simulate signs nothing: no token secret needed"


def _load(args: argparse.Namespace) -> tuple[LineSpec, Scenario]:
    settings = Settings.from_env(config=args.config)
    if not (settings.token_secret or settings.token_key_file):
        settings = dataclasses.replace(settings, token_secret=UNSIGNED)
    lines = load_lines(settings.config, settings)
    if args.line not in lines:
        raise SimulationError(f"--line={args.line!r}: no such line (there are: {', '.join(lines)})")
    spec = what_if(lines[args.line], **{name: getattr(args, name) for name in WHAT_IF})
    guests, seed = _whole(args.guests, "--guests", minimum=1), _whole(args.seed, "--seed", minimum=0)
    return spec, Scenario(guests, parse_rate(args.arrival_rate), Durations.parse(args.duration_dist), seed)


def _whole(text: str, flag: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise SimulationError(f"{flag}={text!r}: must be a whole number >= {minimum}")
    return value
