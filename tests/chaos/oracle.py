"""The oracle: what must hold after every fault-injection scenario, checked the same way
by the CI tests (tests/test_chaos_*.py) and the long runs (bench/chaos.py).

The promise (docs/reliability.md): every accepted request ends in exactly one
terminal event for a guest still connected and exactly one terminal log row,
and nothing leaks. A :class:`Verdict` collects every broken part of it rather
than stopping at the first, so a long run can print them all.

What guests saw is read with a strict SSE parser of our own (:class:`SSEParser`,
the WHATWG algorithm), not the client library the tests use elsewhere, so
framing bugs cannot hide behind a lenient reader.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TERMINAL_STATUSES = frozenset({"completed", "failed", "timeout", "cancelled"})
TERMINAL_EVENTS = frozenset({"workflow_complete", "timeout", "error"})
WARM_UP = "warm-up"  # the query of the request that starts lazy tasks before a baseline; not in the log checks
STATUS_OF_EVENT = {"workflow_complete": ("completed",), "timeout": ("timeout",), "error": ("failed", "cancelled")}


@dataclass
class SSE:
    name: str
    id: str
    data: Any  # the envelope's payload, already checked against the event name


class SSEParser:
    """The SSE stream format as browsers parse it: lines end at CRLF, LF or CR; a blank line
    dispatches; an event without data is not dispatched; comments (``:``) are counted apart."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pending_cr = False
        self._data: list[str] = []
        self._name = ""
        self._last_id = ""
        self.comments = 0
        self.problems: list[str] = []

    def feed(self, text: str) -> list[SSE]:
        events: list[SSE] = []
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across two reads
        self._pending_cr = False
        self._buffer += text
        lines = self._buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if self._buffer.endswith("\r"):
            self._pending_cr = True
        self._buffer = lines.pop()
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SSE | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._name = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name != "retry":
            self.problems.append(f"unknown SSE field {name!r}")
        return None

    def _dispatch(self) -> SSE | None:
        data, name = "\n".join(self._data), self._name or "message"
        self._data, self._name = [], ""
        if not data:
            return None
        try:
            envelope = json.loads(data)
        except ValueError:
            self.problems.append(f"data line is not JSON: {data[:80]!r}")
            return None
        if not isinstance(envelope, dict) or envelope.get("event") != name:
            self.problems.append(f"envelope does not match event {name!r}: {data[:80]!r}")
            return None
        return SSE(name, self._last_id, envelope.get("data"))


@dataclass
class Guest:
    """What one client saw of one request."""

    label: str = ""
    status_code: int | None = None
    request_id: str | None = None
    events: list[SSE] = field(default_factory=list)
    left: str | None = None  # the phase it hung up in; None = read until the server ended the stream
    reconnected: bool = False
    failure: str | None = None  # a client-side error (connection refused, reset ...)
    problems: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.request_id is not None

    @property
    def connected_to_end(self) -> bool:
        return self.accepted and self.left is None and self.failure is None

    @property
    def terminal(self) -> SSE | None:
        ends = [e for e in self.events if e.name in TERMINAL_EVENTS]
        return ends[-1] if ends else None


@dataclass
class Row:
    request_id: str
    client: str
    query: str
    status: str
    error_code: str | None
    answer: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    wait_ms: float | None
    processing_ms: float | None


@dataclass
class Verdict:
    """Every broken promise of one scenario run, plus counts worth printing."""

    scenario: str
    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.violations.append(message)
        return ok

    def assert_ok(self) -> None:
        shown = "\n  ".join(self.violations[:30])
        more = f"\n  ... and {len(self.violations) - 30} more" if len(self.violations) > 30 else ""
        assert not self.violations, f"{self.scenario}: {len(self.violations)} violations:\n  {shown}{more}"


def check_streams(verdict: Verdict, guests: list[Guest]) -> None:
    """No 500; each guest still connected got exactly one terminal event, last, and nothing after it."""
    for guest in guests:
        verdict.counts[f"http_{guest.status_code}"] += 1
        verdict.check(guest.status_code != 500, f"{guest.label}: a 500 response")
        for problem in guest.problems:
            verdict.violations.append(f"{guest.label} {guest.request_id}: {problem}")
        if not guest.accepted:
            continue
        verdict.counts["accepted"] += 1
        ids = [int(e.id) for e in guest.events]
        verdict.check(ids == sorted(set(ids)), f"{guest.request_id}: event ids not increasing: {ids}")
        ends = [i for i, e in enumerate(guest.events) if e.name in TERMINAL_EVENTS]
        verdict.check(len(ends) <= 1, f"{guest.request_id}: {len(ends)} terminal events")
        if guest.connected_to_end:
            verdict.check(len(ends) == 1, f"{guest.request_id}: stream ended without a terminal event")
            verdict.check(
                not ends or ends[-1] == len(guest.events) - 1,
                f"{guest.request_id}: events after the terminal event: {[e.name for e in guest.events]}",
            )


def read_log(db_path: str | Path) -> list[Row]:
    """All rows of the request log (read after the server stopped: the log is flushed on stop)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        found = conn.execute(
            "SELECT request_id, client, query, status, error_code, answer, created_at, started_at, finished_at, "
            "wait_ms, processing_ms FROM requests WHERE query != ?",
            (WARM_UP,),
        ).fetchall()
    return [Row(*values) for values in found]


def integrity_ok(db_path: str | Path) -> bool:
    with sqlite3.connect(db_path) as conn:
        return bool(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


def check_log(
    verdict: Verdict, guests: list[Guest], rows: list[Row], *, terminal: frozenset[str] = TERMINAL_STATUSES
) -> dict[str, Row]:
    """Each accepted request has exactly one row, terminal, agreeing with the event its guest saw;
    429/503s have ``rejected`` rows (sampled: at most one per client per second); no row is left open."""
    by_id: dict[str, Row] = {}
    for row in rows:
        verdict.check(row.request_id not in by_id, f"{row.request_id}: two rows")
        by_id[row.request_id] = row
        verdict.counts[f"row_{row.status}" + (f"_{row.error_code}" if row.error_code else "")] += 1
    rejected_rows = sum(row.status == "rejected" for row in rows)
    rejected_guests = sum(g.status_code in (429, 503) and not g.accepted for g in guests)
    verdict.check(
        (rejected_rows > 0) == (rejected_guests > 0) and rejected_rows <= rejected_guests,
        f"{rejected_guests} guests were refused but {rejected_rows} rejected rows",
    )
    accepted = {g.request_id: g for g in guests if g.request_id is not None}
    for row in rows:
        if row.status != "rejected":
            verdict.check(row.request_id in accepted, f"{row.request_id}: a row nobody was given ({row.status})")
    for request_id, guest in accepted.items():
        found = by_id.get(request_id)
        if found is None:
            verdict.violations.append(f"{request_id}: accepted but no log row")
            continue
        row = found
        if not verdict.check(row.status in terminal, f"{request_id}: row left {row.status!r}"):
            continue
        end = guest.terminal
        if end is not None:
            verdict.check(
                row.status in STATUS_OF_EVENT[end.name], f"{request_id}: guest saw {end.name}, row says {row.status}"
            )
            if end.name == "error" and isinstance(end.data, dict):
                verdict.check(
                    row.error_code == end.data.get("code"),
                    f"{request_id}: guest saw code {end.data.get('code')!r}, row says {row.error_code!r}",
                )
    return by_id


def check_drained(verdict: Verdict, service: Any) -> None:
    """The service's own counters are back to zero (the in-loop test hook)."""
    verdict.check(len(service.waiting) == 0, f"{len(service.waiting)} flights still in line")
    verdict.check(not service.running, f"{len(service.running)} flights still active")
    verdict.check(not service.registry.clients, f"per-client counts left: {service.registry.clients}")
    verdict.check(len(service.registry) == 0, f"{len(service.registry)} live tickets left")
    verdict.check(not service.core.flights.keyed, f"{service.core.flights.keyed} flights left in the single-flight map")


async def drained(service: Any, timeout_s: float) -> bool:
    """Wait (bounded) for the reconnect grace and stragglers to end every ticket."""
    deadline = time.monotonic() + timeout_s
    while len(service.registry) or len(service.waiting) or service.running:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def warm_up(running: Any) -> None:
    """One request through a fresh server, so tasks started lazily on first use (e.g. the HTTP
    client's connection pool) are part of the baseline."""
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{running.base}/chat", json={"query": WARM_UP}) as response:
            await response.aread()
    await drained(running.service, 5.0)


def task_count() -> int:
    return len(asyncio.all_tasks())


async def settle_tasks(verdict: Verdict, baseline: int, timeout_s: float = 5.0) -> int:
    """The number of asyncio tasks returns to what it was before the scenario (allowing a short settle)."""
    deadline = time.monotonic() + timeout_s
    while (count := task_count()) > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if count > baseline:
        extra = Counter(_task_label(t) for t in asyncio.all_tasks())
        verdict.violations.append(f"{count} asyncio tasks, baseline {baseline}: {dict(extra)}")
    verdict.figures["tasks_after"] = f"{count} (baseline {baseline})"
    return count


def _task_label(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or task.get_name()


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process (this one by default), from /proc/PID/status."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def check_rss(verdict: Verdict, before_mb: float, after_mb: float, bound_mb: float) -> None:
    grown = after_mb - before_mb
    verdict.figures["rss_growth_mb"] = round(grown, 1)
    verdict.check(grown <= bound_mb, f"memory grew {grown:.1f} MB (bound {bound_mb} MB)")
