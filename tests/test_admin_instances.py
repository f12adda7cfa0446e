"""The admin API with several instances on one Redis: a change made on one holds on all within 1 s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import MockUpstream, stream_events
from .support.instances import shared_instances

ADMIN_KEY = "the-super-admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}
PROPAGATION_S = 1.0


@pytest.fixture
def pair(tmp_path: Path, redis_url: str, redis_prefix: str, upstream: MockUpstream) -> Iterator[list[str]]:
    """Two instances (their /api/v1 URLs) sharing one Redis."""
    # outbound_allow: the operator lets lines made through the admin API reach the loopback mock upstream.
    for bases in shared_instances(
        tmp_path,
        2,
        redis_url,
        redis_prefix,
        upstream_url=upstream.url(chunks=1),
        admin_api_key=ADMIN_KEY,
        outbound_allow="127.0.0.0/8",
    ):
        yield [base.removesuffix("/guest") for base in bases]


async def _within(seconds: float, check: Any) -> float:
    """Poll ``check`` (an async predicate) until it holds; returns how long that took."""
    began = time.monotonic()
    while not await check():
        assert time.monotonic() - began < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.15)  # slower than the wrong-key throttle's 5 a second
    return time.monotonic() - began


async def test_a_line_made_on_one_instance_serves_guests_on_the_other_within_a_second(
    pair: list[str],
    upstream: MockUpstream,
) -> None:
    a, b = pair
    url, tag = upstream.tagged(chunks=2)
    async with httpx.AsyncClient(timeout=10) as client:
        made = await client.post(f"{a}/admin/lines", json={"name": "late", "upstream_url": url}, headers=ADMIN)
        assert made.status_code == 201

        async def served_on_b() -> bool:
            return (await client.get(f"{b}/lines/late/queue/status")).status_code == 200

        await _within(PROPAGATION_S, served_on_b)
        events = await stream_events(client, f"{b}/lines/late/chat", json={"query": "hello B"})
        assert events[-1].name == "workflow_complete"
        assert [call["body"]["query"] for call in await upstream.acalls(tag)] == ["hello B"]
        # Paused on B, held on A as well.
        assert (await client.put(f"{b}/admin/lines/late", json={"mode": "paused"}, headers=ADMIN)).status_code == 200

        async def paused_on_a() -> bool:
            lines = (await client.get(f"{a}/lines")).json()["lines"]
            return any(line["name"] == "late" and line["mode"] == "paused" for line in lines)

        await _within(PROPAGATION_S, paused_on_a)


async def test_a_revoked_key_is_refused_on_every_instance_within_a_second(
    pair: list[str],
    tmp_path: Path,
) -> None:
    a, b = pair
    async with httpx.AsyncClient(timeout=10) as client:
        app = (await client.post(f"{a}/admin/applications", json={"name": "x"}, headers=ADMIN)).json()["id"]
        made = (await client.post(f"{a}/admin/applications/{app}/keys", json={"role": "admin"}, headers=ADMIN)).json()
        key = {"X-API-Key": made["key"]}

        async def works_on_b() -> bool:
            return (await client.get(f"{b}/admin/auth/me", headers=key)).status_code == 200

        await _within(PROPAGATION_S, works_on_b)
        revoked = await client.delete(f"{b}/admin/applications/{app}/keys/{made['id']}", headers=ADMIN)
        assert revoked.status_code == 200

        async def refused_everywhere() -> bool:
            answers = [await client.get(f"{base}/admin/auth/me", headers=key) for base in (a, b)]
            return all(answer.status_code in (403, 429) for answer in answers)  # 429: the throttle

        await _within(PROPAGATION_S, refused_everywhere)
    logs = "".join(path.read_text(errors="replace") for path in tmp_path.glob("guestqueue-*.log"))
    assert made["key"].removeprefix("gq_").split("_", 1)[1] not in logs, "no key is ever logged"


@pytest.fixture
def slow_ticking_pair(tmp_path: Path, redis_url: str, redis_prefix: str, upstream: MockUpstream) -> Iterator[list[str]]:
    """Two instances whose guests hear their place only every 5 s, unless something moves them."""
    for bases in shared_instances(
        tmp_path,
        2,
        redis_url,
        redis_prefix,
        upstream_url=upstream.url(chunks=1, first=3.0),
        admin_api_key=ADMIN_KEY,
        position_update_s=5.0,
        max_concurrent_requests=1,
    ):
        yield [base.removesuffix("/guest") for base in bases]


async def _positions(client: httpx.AsyncClient, url: str, heard: list[tuple[float, int]], **kwargs: Any) -> None:
    async with client.stream("POST", url, **kwargs) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                envelope = json.loads(line.removeprefix("data:"))
                if envelope["event"] == "queued":
                    heard.append((time.monotonic(), envelope["data"]["queue_position"]))


async def test_a_guest_passed_by_a_higher_tier_on_another_instance_hears_it_at_once(
    slow_ticking_pair: list[str],
) -> None:
    a, b = slow_ticking_pair
    async with httpx.AsyncClient(timeout=30) as client:
        app = (await client.post(f"{a}/admin/applications", json={"name": "t"}, headers=ADMIN)).json()["id"]
        made = await client.post(
            f"{a}/admin/lines", json={"name": "t", "application_id": app, "tiers": ["paid", "free"]}, headers=ADMIN
        )
        assert made.status_code == 201
        key = (
            await client.post(
                f"{a}/admin/applications/{app}/keys",
                headers=ADMIN,
                json={"tier": "paid", "permissions": {"t": ["WRITE"]}},
            )
        ).json()["key"]

        async def served_on_b() -> bool:
            return (await client.get(f"{b}/lines/t/queue/status")).status_code == 200

        await _within(PROPAGATION_S, served_on_b)
        running: list[tuple[float, int]] = []
        waiting: list[tuple[float, int]] = []
        tasks = [asyncio.create_task(_positions(client, f"{b}/lines/t/chat", running, json={"query": "free 1"}))]
        await asyncio.sleep(0.5)
        tasks.append(asyncio.create_task(_positions(client, f"{b}/lines/t/chat", waiting, json={"query": "free 2"})))
        while not waiting:
            await asyncio.sleep(0.02)
        assert waiting[-1][1] == 1
        asked = time.monotonic()
        tasks.append(
            asyncio.create_task(
                _positions(client, f"{a}/lines/t/chat", [], json={"query": "paid"}, headers={"X-API-Key": key})
            )
        )
        while not any(position == 2 for _, position in waiting):
            assert time.monotonic() - asked < 2.0, f"not told within 2 s (ticks every 5 s): {waiting}"
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
