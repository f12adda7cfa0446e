"""Issue 21: a Redis that forgets (FLUSHALL, a restart without persistence) or stalls (DEBUG SLEEP)
while guests wait on two instances costs them time, never an answer, their order or a duplicate.

Two `python -m guestqueue serve` processes on one real redis-server of their own (a flush would
wipe other tests' keys), one real mock upstream; the trouble comes while the first guest's call
streams and the others wait, their admissions alternating between the instances.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .chaos.forgetful import trouble
from .conftest import MockUpstream, Received
from .redis_server import run_redis
from .support.instances import shared_instances, stream_noting, tagged_body
from .support.waitingroom import ROOM_SECRET, join_room, poll_room, poll_until, room_toml

GUESTS = 8


@pytest.mark.parametrize("kind", ["flush", "restart", "sleep"])
async def test_a_forgetful_or_stalled_redis_keeps_order_answers_and_each_chunk_once(
    tmp_path: Path, redis_prefix: str, upstream: MockUpstream, kind: str
) -> None:
    tag = f"{kind}-{redis_prefix}"
    with run_redis() as redis:
        settings: dict[str, Any] = {
            "upstream_url": upstream.url(),
            "instance_ttl_s": 1.0,
            "max_concurrent_requests": 1,
            "upstream_interval_s": 0.2,
            "max_wait_s": 60,
        }
        for bases in shared_instances(tmp_path, 2, redis.url, redis_prefix, **settings):
            async with httpx.AsyncClient(timeout=60) as client:
                streams: list[asyncio.Task[list[Received]]] = []
                for n in range(GUESTS):  # each in line before the next asks, on the other instance
                    mock = {"chunks": 6, "delay": 0.3} if n == 0 else {"chunks": 3, "delay": 0.05}
                    admitted = asyncio.Event()
                    streams.append(
                        asyncio.create_task(
                            stream_noting(client, f"{bases[n % 2]}/chat", tagged_body(f"g{n}", tag, **mock), admitted)
                        )
                    )
                    await asyncio.wait_for(admitted.wait(), 10)
                await asyncio.sleep(0.5)  # the first call is streaming, seven guests wait
                await trouble(redis, kind)
                results = await asyncio.gather(*streams)
            for n, events in enumerate(results):
                endings = [e for e in events if e.name in ("workflow_complete", "error", "timeout")]
                assert [e.name for e in endings] == ["workflow_complete"], (n, endings)
                chunks = [e.data for e in events if e.name == "answer_chunk"]
                expected = [f"chunk{i} " for i in range(6 if n == 0 else 3)]
                assert chunks == expected, f"guest {n} heard {chunks}"
                assert endings[0].data["answer"] == "".join(expected)
            queries = [call["body"]["query"] for call in await upstream.acalls(tag)]
            assert queries == [f"g{n}" for n in range(GUESTS)], "each asked once, in admission order"


async def test_a_waiting_room_never_lets_more_in_than_max_active_after_redis_forgot(
    tmp_path: Path, redis_prefix: str
) -> None:
    """Issue 21 point 3, seen on main: after a flush the admitted sessions read "session is unknown"
    and as many guests again were let in. Now the instances give their unexpired sessions back:
    the tokens verify and nobody else gets in until a session ends."""
    config = tmp_path / "rooms.toml"
    config.write_text(room_toml(max_active=2, batch_size=20, process_interval_sec=0.1))
    with run_redis() as redis:
        for bases in shared_instances(
            tmp_path, 2, redis.url, redis_prefix, config=str(config), token_secret=ROOM_SECRET, instance_ttl_s=1.0
        ):
            urls = [base.removesuffix("/guest") + "/lines/shop" for base in bases]
            async with httpx.AsyncClient(timeout=30) as client:
                joined = [(urls[n % 2], (await join_room(client, urls[n % 2]))["request_id"]) for n in range(5)]

                async def inside(joined: list[tuple[str, str]] = joined) -> dict[str, str]:  # where each joined
                    states = [await poll_room(client, url, request_id) for url, request_id in joined]
                    return {s["request_id"]: s["token"] for s in states if s["status"] == "admitted"}

                await poll_until(inside)
                await asyncio.sleep(0.5)
                tokens = await inside()
                assert len(tokens) == 2, tokens
                await trouble(redis, "flush")
                for url, request_id in joined:  # asked at once on the other instance: never "no such request"
                    other = urls[1 - urls.index(url)]
                    early = await client.get(f"{other}/join/{request_id}")
                    assert early.status_code in (200, 503), early.text
                    if early.status_code == 503:
                        assert early.json()["code"] == "unavailable" and early.headers["retry-after"], early.text
                deadline = time.monotonic() + 3.0  # three rebuild windows
                while time.monotonic() < deadline:
                    assert await inside() == tokens, "nobody else was let in while two sessions are open"
                    await asyncio.sleep(0.1)
                for url in urls:
                    for token in tokens.values():
                        verified = (await client.post(f"{url}/tokens/verify", json={"token": token})).json()
                        assert verified["valid"] is True, verified
                first = next(iter(tokens))
                assert (await client.post(f"{urls[1]}/sessions/{first}/complete")).status_code == 200
                await poll_until(lambda: _exactly(inside, 3))


async def _exactly(inside: Any, count: int) -> bool:
    return len(await inside()) == count
