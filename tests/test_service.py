"""The service (guestqueue/service.py) and its position ticker (guestqueue/positions.py)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import httpx

from guestqueue import Settings
from guestqueue.lines.memory import MIN_REPORT_GAP_S, MemoryLine
from guestqueue.positions import Positions
from guestqueue.tickets import Flight, Status, Ticket
from guestqueue.upstream import WorkflowRequest

from .conftest import FAST, MockUpstream, serve, wait_until


async def _never(request: WorkflowRequest) -> AsyncIterator[str]:
    await asyncio.Event().wait()  # holds its slot until cancelled
    yield ""


async def test_position_ticks_keep_a_fixed_cadence_however_long_a_round_takes() -> None:
    # A round of updates takes time (~0.15 s at 10 000 guests); the next round must
    # still come one interval after the previous one started, not after it ended.
    interval_s, work_s = 0.1, 0.04
    settings = Settings(**{**FAST, "position_update_s": interval_s})  # type: ignore[arg-type]
    line = MemoryLine(max_size=10, max_concurrent=1, interval_s=0)
    ticket = Ticket("waiting", "c")
    flight = Flight(None, [ticket], WorkflowRequest(ticket.id, "waiting"))
    await line.admit(flight)
    positions = Positions(settings, line, {flight.id: flight})
    rounds: list[float] = []

    def slow_tell(ticket: Ticket, position: int) -> None:
        rounds.append(asyncio.get_running_loop().time())
        time.sleep(work_s)

    positions.tell = slow_tell  # type: ignore[method-assign]
    ticker = asyncio.create_task(positions._tick())
    await asyncio.sleep(interval_s * 6.5)
    ticker.cancel()
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    assert len(gaps) >= 4
    assert max(gaps) < interval_s + 0.02, gaps
    assert sum(gaps) / len(gaps) < interval_s + 0.01


async def test_a_burst_at_an_idle_server_fills_free_slots_before_the_line(upstream: MockUpstream) -> None:
    # Four idle slots and room for two in line: six guests arriving together are all let in,
    # the seventh is refused. The four a free slot starts at once are not "waiting".
    async with (
        serve(upstream_url=upstream.url(delay=0.3), max_concurrent_requests=4, max_queue_size=2) as running,
        httpx.AsyncClient(timeout=20) as client,
    ):
        answers = await asyncio.gather(
            *[client.post(f"{running.base}/chat/simple", json={"query": f"burst {i}"}) for i in range(6)]
        )
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        answers = await asyncio.gather(
            *[client.post(f"{running.base}/chat/simple", json={"query": f"more {i}"}) for i in range(7)]
        )
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] * 6 + [429], codes


def _events_published(tickets: list[Ticket]) -> int:
    return sum(ticket.events.last_id for ticket in tickets)  # ids count every event, kept or not


def _rounds_allowed(elapsed_s: float) -> float:
    """Rounds of place reports a line may make in ``elapsed_s``: the change-driven ones at most every
    MIN_REPORT_GAP_S, the ticks every position_update_s, and a few at the edges. On a loaded machine
    the churn takes longer and more rounds are fair; without the gap, each change was a round."""
    return elapsed_s / MIN_REPORT_GAP_S + elapsed_s / float(FAST["position_update_s"]) + 3  # type: ignore[arg-type]


async def test_churn_does_not_re_announce_the_whole_line() -> None:
    # 300 waiting guests, then 50 leave-and-join pairs in quick succession. Each pair used to
    # re-announce every waiting guest's place (15 299 events in all); now reports come at most
    # every MIN_REPORT_GAP_S.
    waiting = 300
    async with serve(_never, max_concurrent_requests=1, max_queue_size=1000) as running:
        service = running.service
        tickets = [await service.submit(f"q{i}", client=f"c{i}") for i in range(waiting)]
        await asyncio.sleep(MIN_REPORT_GAP_S * 2)
        before, began = _events_published(tickets), time.monotonic()
        for i in range(50):
            service.cancel(tickets[i + 1], Status.CANCELLED, "cancelled", "bye")
            tickets.append(await service.submit(f"again {i}", client=f"again{i}"))
            await asyncio.sleep(0)
        await asyncio.sleep(MIN_REPORT_GAP_S * 2)
        rounds = (_events_published(tickets) - before) / waiting
        assert rounds < _rounds_allowed(time.monotonic() - began), f"{rounds:.1f} rounds for 50 churn steps"


async def test_status_polls_tell_nobody() -> None:
    # Each GET /queue/request/{id} after a change used to re-announce every waiting guest's place.
    waiting = 300
    async with (
        serve(_never, max_concurrent_requests=1, max_queue_size=1000) as running,
        httpx.AsyncClient(timeout=20) as client,
    ):
        service = running.service
        tickets = [await service.submit(f"q{i}", client=f"c{i}") for i in range(waiting)]
        await asyncio.sleep(MIN_REPORT_GAP_S * 2)
        before, began = _events_published(tickets), time.monotonic()
        for i in range(50):
            service.cancel(tickets[i + 1], Status.CANCELLED, "cancelled", "bye")
            poll = await client.get(f"{running.base}/queue/request/{tickets[-1].id}")
            assert poll.json()["queue_position"] == waiting - 2 - i, "polls stay exact"
        await asyncio.sleep(MIN_REPORT_GAP_S * 2)
        rounds = (_events_published(tickets) - before) / waiting
        assert rounds < _rounds_allowed(time.monotonic() - began), f"{rounds:.1f} rounds for 50 polls"


async def _two_chunks(request: WorkflowRequest) -> AsyncIterator[str]:
    yield "one "
    yield "two"


async def test_full_event_logs_of_finished_requests_are_bounded_by_count() -> None:
    # Finished requests keep their whole log for a minute, for a guest reconnecting after the
    # end, but never more of them than can still be looked up: above ~17 requests/s the timers
    # used to keep logs the registry had already let go of.
    async with serve(_two_chunks, max_concurrent_requests=50, max_queue_size=2000, max_per_client=5000) as running:
        service = running.service
        keep = service.registry._keep_finished
        tickets = [await service.submit(f"q{i}", client="c") for i in range(keep + 500)]
        await wait_until(lambda: all(t.done for t in tickets), 20, "every request to finish")
        full = [t for t in tickets if len(t.events.after(0)) > 1]
        assert len(full) <= keep, f"{len(full)} full logs kept"
        assert full == tickets[-len(full) :], "the newest keep their logs for replay"
        assert service.registry.get(tickets[-1].id) is tickets[-1]
