"""Priority tiers over real uvicorn: a key's tier goes first, and aging bounds the wait of the rest."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import MockUpstream
from .support.admin import ADMIN, admin_server, make_application, make_key, make_line

STARVATION_S = 1.5
CALL_S = 0.3


async def _timed(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> dict[str, Any]:
    """One guest: when it was admitted and started, and every place it heard."""
    out: dict[str, Any] = {"positions": []}
    async with client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            envelope = json.loads(line.removeprefix("data:"))
            event, data = envelope["event"], envelope["data"]
            if event == "queued":
                out.setdefault("admitted", time.monotonic())
                out["positions"].append(data["queue_position"])
            elif event == "processing":
                out["started"] = time.monotonic()
            elif event in ("workflow_complete", "error", "timeout"):
                out["end"] = event
    return out


async def test_a_free_guest_starts_within_the_starvation_bound_under_a_stream_of_paid_guests(
    tmp_path: Path,
    upstream: MockUpstream,
) -> None:
    url, tag = upstream.tagged(chunks=1, first=CALL_S)
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=60) as client:
        app = await make_application(client, api, "tiers")
        await make_line(
            client,
            api,
            name="t",
            application_id=app,
            upstream_url=url,
            max_concurrent_requests=1,
            tiers=["paid", "free"],
            max_starvation_sec=STARVATION_S,
            max_queue_size=100,
        )
        paid = {"X-API-Key": await make_key(client, api, app, tier="paid", permissions={"t": ["WRITE"]})}
        chat = f"{api}/lines/t/chat"
        paid_guests = []
        # Paid guests come faster (one per 0.15 s) than the line serves them (one per 0.3 s).
        for n in range(30):
            paid_guests.append(asyncio.create_task(_timed(client, chat, {"query": f"paid {n}"}, paid)))
            if n == 3:
                free = asyncio.create_task(_timed(client, chat, {"query": "free"}, {}))
            await asyncio.sleep(0.15)
        free_guest = await free
        await asyncio.gather(*paid_guests)
        order = [call["body"]["query"] for call in await upstream.acalls(tag)]
        me = await client.get(f"{api}/admin/auth/me", headers=paid)
    assert me.json()["tier"] == "paid"
    assert free_guest["end"] == "workflow_complete"
    waited = free_guest["started"] - free_guest["admitted"]
    # Aging: after STARVATION_S it goes before every newer paid guest; then at most the call
    # running and one more (already handed to the worker) go first. Without aging it would
    # wait for all 30 paid guests (about 9 s).
    assert waited < STARVATION_S + 3 * CALL_S + 1.0, waited
    passed_by = order.index("free") - 4  # paid guests admitted after it that started before it
    assert passed_by >= 1, f"no higher-tier guest went first: {order}"
    positions = free_guest["positions"]
    assert any(b > a for a, b in itertools.pairwise(positions)), (
        f"a guest passed by a higher tier hears its new place: {positions}"
    )
    assert (await asyncio.gather(*paid_guests))[-1]["end"] == "workflow_complete"


async def test_a_key_of_another_application_buys_no_priority(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (running, api), httpx.AsyncClient(timeout=30) as client:
        owner, other = await make_application(client, api, "owner"), await make_application(client, api, "other")
        await make_line(
            client,
            api,
            name="p",
            application_id=owner,
            tiers=["paid", "free"],
            max_concurrent_requests=1,
            upstream_url=upstream.url(chunks=1, first=0.5),
        )
        outsider = {"X-API-Key": await make_key(client, api, other, tier="paid", permissions={"*": ["WRITE"]})}
        first = asyncio.create_task(_timed(client, f"{api}/lines/p/chat", {"query": "running"}, {}))
        assert running.guest.lineup is not None
        line = running.guest.lineup.get("p").service.line
        while line.peek().active == 0:
            await asyncio.sleep(0.02)
        free = asyncio.create_task(_timed(client, f"{api}/lines/p/chat", {"query": "free"}, {}))
        while line.peek().size < 1:
            await asyncio.sleep(0.02)
        claimed = await _timed(client, f"{api}/lines/p/chat", {"query": "claims paid"}, outsider)
        assert claimed["positions"][0] == 2, "behind the free guest who came first"
        await asyncio.gather(first, free)
        assert (await client.get(f"{api}/admin/auth/me", headers=ADMIN)).json()["role"] == "super_admin"


async def test_the_predicted_wait_is_the_newcomers_own_tiers(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (running, api), httpx.AsyncClient(timeout=30) as client:
        app = await make_application(client, api, "w")
        await make_line(
            client,
            api,
            name="w",
            application_id=app,
            tiers=["paid", "free"],
            max_concurrent_requests=1,
            max_predicted_wait_sec=3,
            upstream_url=upstream.url(chunks=1, first=2.0),
        )
        paid = {"X-API-Key": await make_key(client, api, app, tier="paid", permissions={"w": ["WRITE"]})}
        assert running.guest.lineup is not None
        service = running.guest.lineup.get("w").service
        service.positions.estimator.record(2.0)  # as if one call had been measured
        chat = f"{api}/lines/w/chat"
        guests = [asyncio.create_task(_timed(client, chat, {"query": "free 1"}, {}))]
        while service.line.peek().active == 0:
            await asyncio.sleep(0.02)
        guests.append(asyncio.create_task(_timed(client, chat, {"query": "free 2"}, {})))
        while service.line.peek().size == 0:
            await asyncio.sleep(0.02)
        refused = await client.post(chat, json={"query": "free 3"})
        assert refused.status_code == 429 and refused.json()["code"] == "wait_too_long"
        guests.append(asyncio.create_task(_timed(client, chat, {"query": "paid 1"}, paid)))
        results = await asyncio.gather(*guests)
    assert results[-1]["positions"][0] == 1, "ahead of the free guest waiting"
    assert all(result["end"] == "workflow_complete" for result in results)
