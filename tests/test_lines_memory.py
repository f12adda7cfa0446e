"""The memory line's own parts: hand-off, silent renumbering, throttled reports (the behaviour both
lines share is in test_lines_contract.py)."""

from __future__ import annotations

import asyncio

import pytest

from guestqueue.errors import LineFull
from guestqueue.lines.memory import MIN_REPORT_GAP_S, MemoryLine
from guestqueue.tickets import Flight, Ticket
from guestqueue.upstream import WorkflowRequest


def _flights(n: int) -> list[Flight]:
    return [Flight(None, [Ticket(f"q{i}", "client")], WorkflowRequest(f"r{i}", f"q{i}")) for i in range(n)]


async def test_positions_are_exact_after_leaving_and_starting() -> None:
    moved: list[list[Flight]] = []
    line = MemoryLine(max_size=10, max_concurrent=1, interval_s=0, on_moved=moved.append)
    a, b, c, d = _flights(4)
    for t in (a, b, c, d):
        line.admit_now(t)
    assert [line.position(t) for t in (a, b, c, d)] == [1, 2, 3, 4]
    line.leave_now(b)
    assert [line.position(t) for t in (a, c, d)] == [1, 2, 3]
    assert line.position(b) == 0
    held = await line.next()
    assert held is a and line.position(a) == 1, "held by a worker but not started: still position 1"
    line.leave_now(a)  # started
    assert [line.position(t) for t in (c, d)] == [1, 2]
    assert len(line) == 2
    assert await line.next() is c


async def test_changes_in_one_loop_iteration_renumber_once() -> None:
    batches: list[list[Flight]] = []
    line = MemoryLine(max_size=1000, max_concurrent=1, interval_s=0, on_moved=batches.append)
    flights = _flights(1000)
    for t in flights:
        line.admit_now(t)
    for t in flights[:10]:
        line.leave_now(t)
    await asyncio.sleep(0)  # the scheduled renumbering runs
    assert len(batches) == 1, "one pass for the whole batch of changes"
    assert len(batches[0]) == 990 and flights[10].position == 1
    await asyncio.sleep(0)
    assert len(batches) == 1


async def test_left_tickets_are_never_handed_to_a_worker() -> None:
    line = MemoryLine(max_size=10, max_concurrent=1, interval_s=0)
    a, b, c = _flights(3)
    for t in (a, b, c):
        line.admit_now(t)
    line.leave_now(a)
    line.leave_now(b)
    assert await asyncio.wait_for(line.next(), 1) is c


async def test_bounded() -> None:
    # Room for one waiting flight, plus the one the idle slot starts at once.
    line = MemoryLine(max_size=1, max_concurrent=1, interval_s=0)
    a, b, c = _flights(3)
    line.admit_now(a)
    line.admit_now(b)
    with pytest.raises(LineFull):
        line.admit_now(c)
    line.leave_now(a)
    line.admit_now(c)
    assert line.position(c) == 2


async def test_reports_under_churn_are_spaced_but_reads_stay_exact() -> None:
    batches: list[list[Flight]] = []
    line = MemoryLine(max_size=1000, max_concurrent=1, interval_s=0, on_moved=batches.append)
    flights = _flights(100)
    for f in flights:
        line.admit_now(f)
    line.leave_now(flights[0])
    await asyncio.sleep(0)
    assert len(batches) == 1, "after a quiet spell a change is reported at once"
    for f in flights[1:6]:  # a start every few milliseconds
        line.leave_now(f)
        assert line.position(flights[-1]) == 100 - (flights.index(f) + 1), "reads are exact at once"
        await asyncio.sleep(0.005)
    reported = len(batches)
    await asyncio.sleep(MIN_REPORT_GAP_S * 1.5)
    assert len(batches) <= reported + 1 and flights[6].position == 1


async def test_reading_positions_never_reports() -> None:
    # Reads (a status poll, a new guest's admission) renumber silently; only the
    # throttled report tells guests, and it tells each moved flight once.
    batches: list[list[Flight]] = []
    line = MemoryLine(max_size=1000, max_concurrent=1, interval_s=0, on_moved=batches.append)
    flights = _flights(100)
    for f in flights:
        line.admit_now(f)
    line.leave_now(flights[0])
    for f in flights[1:]:
        assert line.position(f) == flights.index(f)
    line.admit_now(_flights(1)[0])
    dict(line.view_now().positions)
    assert batches == [], "reads and admissions must not report"
    await asyncio.sleep(0)
    assert len(batches) == 1 and len(batches[0]) == 99, "the report still tells everyone who moved, once"
    line.leave_now(flights[1])
    line.position(flights[2])
    await asyncio.sleep(MIN_REPORT_GAP_S * 1.5)
    assert len(batches) == 2 and len(batches[1]) == 99


async def test_flights_a_free_slot_starts_now_do_not_count_as_waiting() -> None:
    line = MemoryLine(max_size=2, max_concurrent=4, interval_s=0)
    for flight in _flights(6):
        line.admit_now(flight)
    with pytest.raises(LineFull):
        line.admit_now(_flights(1)[0])
