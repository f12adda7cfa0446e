"""lines/redis/tally.py at unit level: a shared line's totals and recent requests, on a real redis-server."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from guestqueue.lines.redis.boundary import text
from guestqueue.lines.redis.keys import Keys
from guestqueue.lines.redis.tally import RedisTally
from guestqueue.stats import Stats
from guestqueue.tickets import Status, Ticket, new_request_id


async def _calls(redis: aioredis.Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_burst_of_requests_is_counted_whole_in_a_few_pipelines(redis_url: str, redis_prefix: str) -> None:
    redis = aioredis.from_url(redis_url)
    try:
        tally = RedisTally(redis, Keys(redis_prefix), history_size=50)
        pushes_before = await _calls(redis, "lpush")
        tickets = [Ticket(f"q{n}", "client", {}, None, None, id=new_request_id()) for n in range(100)]
        for ticket in tickets:
            tally.admitted(ticket)
        for ticket in tickets[:10]:
            ticket.status, ticket.wait_ms, ticket.duration_ms = Status.COMPLETED, 1000, 250.5
            tally.ended(ticket)
        tally.rejected("client", "q", "queue_full")

        for _ in range(250):  # every count in Redis, soon
            stats = await tally.stats(Stats())
            if stats.total_requests == 100 and stats.outcomes[Status.COMPLETED] == 10:
                break
            await asyncio.sleep(0.02)
        assert (stats.total_requests, stats.outcomes[Status.COMPLETED]) == (100, 10)
        assert stats.rejections == {"queue_full": 1}
        totals = await redis.hgetall(Keys(redis_prefix).totals)
        assert float(totals[b"wait_ms_sum"]) == 10_000 and float(totals[b"processing_ms_sum"]) == 2505
        recent = [text(r) for r in await redis.lrange(Keys(redis_prefix).recent, 0, -1)]
        assert recent == [t.id for t in reversed(tickets[-50:])], "the newest first, capped"
        # What came while a pipeline was on its way went in the next: not one per request.
        assert await _calls(redis, "lpush") - pushes_before <= 3
    finally:
        await redis.aclose()
