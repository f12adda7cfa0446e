"""Fair shares over real uvicorn (fairness.py), in memory and on a real redis-server: two
applications, one asking six times as often as the other, on a line with ``fairness = "fair"``
and on one with ``fifo``."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from guestqueue.fairness import CALL_COST, CHARS_PER_TOKEN, Shares, jain_index, service_of
from guestqueue.upstream.http import answer_from_json, chunk_from_json

from .conftest import MockUpstream
from .support.admin import ADMIN, admin_server, make_application, make_key, make_line

CALL_S = 0.15
HEAVY = 6  # the heavy application's questions, all asked at once
LIGHT = 2  # the light one's, asked once the heavy ones wait


@pytest.fixture(params=["memory", "redis"])
def shared(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return {"redis_url": request.getfixturevalue("redis_url"), "redis_prefix": request.getfixturevalue("redis_prefix")}


async def _guest(client: httpx.AsyncClient, url: str, query: str, key: str) -> list[int]:
    """Ask, and return every place heard in line."""
    places: list[int] = []
    async with client.stream("POST", url, json={"query": query}, headers={"X-API-Key": key}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                envelope = json.loads(line.removeprefix("data:"))
                if envelope["event"] == "queued":
                    places.append(envelope["data"]["queue_position"])
                elif envelope["event"] in ("error", "timeout"):
                    raise AssertionError(envelope)
    return places


async def _in_line(client: httpx.AsyncClient, api: str, name: str, waiting: int) -> bool:
    """Whether the first call runs and ``waiting`` guests wait behind it."""
    status = (await client.get(f"{api}/lines/{name}/queue/status")).json()
    return bool(status["active_requests"] == 1 and status["queue_size"] == waiting)


async def _order(
    client: httpx.AsyncClient, api: str, upstream: MockUpstream, fairness: str, keys: tuple[str, str]
) -> tuple[list[str], dict[str, list[int]]]:
    """The heavy application's questions, then the light one's: the order the upstream was asked
    in, and the places each guest heard."""
    gate = f"fair-{uuid.uuid4().hex[:8]}"  # the first call waits at it until every guest is in line
    url, tag = upstream.tagged(chunks=2, first=CALL_S, gate=gate)
    name = f"line-{fairness}"
    await make_line(client, api, name=name, upstream_url=url, max_concurrent_requests=1, fairness=fairness)
    chat = f"{api}/lines/{name}/chat"
    heavy_key, light_key = keys
    guests: dict[str, asyncio.Task[list[int]]] = {}
    for share, key, count in (("heavy", heavy_key, HEAVY), ("light", light_key, LIGHT)):
        for n in range(count):  # one after the other: admitted in this order
            guests[f"{share} {n}"] = asyncio.create_task(_guest(client, chat, f"{share} {n}", key))
            while not await _in_line(client, api, name, len(guests) - 1):
                await asyncio.sleep(0.02)
    await upstream.open_gate(gate)
    places = {query: await task for query, task in guests.items()}
    return [call["body"]["query"] for call in await upstream.acalls(tag)], places


async def test_a_light_application_is_not_starved_on_a_fair_line_and_is_on_a_fifo_one(
    tmp_path: Path, upstream: MockUpstream, shared: dict[str, Any]
) -> None:
    async with admin_server(tmp_path, upstream, **shared) as (_, api), httpx.AsyncClient(timeout=60) as client:
        heavy_app = await make_application(client, api, "heavy")
        light_app = await make_application(client, api, "light")
        keys = (await make_key(client, api, heavy_app), await make_key(client, api, light_app))
        fair, fair_places = await _order(client, api, upstream, "fair", keys)
        fifo, _ = await _order(client, api, upstream, "fifo", keys)
        status = (await client.get(f"{api}/lines/line-fair/queue/status")).json()
        metrics = (await client.get(f"{api}/lines/line-fair/metrics", headers=ADMIN)).text
        odd = await client.post(f"{api}/admin/lines", json={"name": "odd", "fairness": "lottery"}, headers=ADMIN)

    # FIFO: the light application waits behind every heavy question asked before it.
    assert fifo[-LIGHT:] == [f"light {n}" for n in range(LIGHT)], fifo
    # Fair: it takes turns with the heavy one from the next start (the heavy share was served, the
    # light one not), and each application's questions keep their own order.
    assert fair[:5] == ["heavy 0", "heavy 1", "light 0", "heavy 2", "light 1"] or fair[:5] == [
        "heavy 0",
        "light 0",
        "heavy 1",
        "light 1",
        "heavy 2",
    ], fair
    assert [q for q in fair if q.startswith("heavy")] == [f"heavy {n}" for n in range(HEAVY)]
    # Heavy guests passed by the light ones heard their places grow at once.
    assert any(places != sorted(places, reverse=True) for query, places in fair_places.items() if "heavy" in query)
    # The line's status says how evenly the shares were served (not who they are); its metrics name them.
    assert status["fairness"]["shares"] == 2 and 0.5 <= status["fairness"]["jain_index"] <= 1
    assert f'guestqueue_fair_share_service{{line="line-fair",share="app:{light_app}"}}' in metrics
    assert 'guestqueue_fair_jain_index{line="line-fair"}' in metrics
    # The admin API reads the key as the file does: one of the two orders, else a clear refusal.
    assert odd.status_code == 422 and odd.json()["code"] == "invalid_field", odd.text
    assert "fairness='lottery'" in odd.json()["error"]


def test_jain_index_is_one_for_equal_service_and_one_over_n_for_one_share_having_everything() -> None:
    assert jain_index([5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert jain_index([9.0, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert jain_index([]) is None


def test_the_shares_snapshot_never_names_a_peer_address() -> None:
    shares = Shares()
    shares.served("app:a1", 900.0)
    shares.served("203.0.113.9", 700.0)
    shares.served("198.51.100.4", 300.0)
    snapshot = shares.snapshot()
    assert snapshot["service"] == {"addresses": 1000, "app:a1": 900}
    assert snapshot["shares"] == 3
    assert "203.0.113.9" not in json.dumps(snapshot)


def test_a_call_costs_its_answers_characters_or_the_tokens_the_upstream_reported() -> None:
    assert service_of(120) == CALL_COST + 120
    assert service_of(120, tokens=40) == CALL_COST + 40 * CHARS_PER_TOKEN
    # OpenAI's usage: the last chunk of a stream (no choice), or a whole JSON answer.
    last = chunk_from_json({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 40}})
    assert last is not None and last.text == "" and last.tokens == 40
    delta = chunk_from_json({"choices": [{"delta": {"content": "Hi"}}]})
    assert delta is not None and delta.tokens is None
    whole = answer_from_json({"choices": [{"message": {"content": "Hello"}}], "usage": {"completion_tokens": 2}})
    assert whole.text == "Hello" and whole.tokens == 2
    for odd in ({"completion_tokens": "40"}, {"completion_tokens": True}, {"completion_tokens": -1}, "40"):
        assert chunk_from_json({"choices": [], "usage": odd}) is None, odd
