"""Helpers for admission lines (waiting rooms): a room's TOML, joining and polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

ROOM_SECRET = "a-token-secret-of-at-least-32-characters!"


def room_toml(name: str = "shop", **keys: Any) -> str:
    # One test client joins many times: its own limit (max_sessions_per_client) is tested on its own.
    settings = {
        "max_active": 3,
        "batch_size": 10,
        "process_interval_sec": 0.1,
        "session_ttl_sec": 30,
        "max_sessions_per_client": 100,
        **keys,
    }
    body = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in settings.items())
    return f'[lines.{name}]\nmode = "admission"\n{body}\n'


async def join_room(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    reply = await client.post(f"{url}/join")
    assert reply.status_code == 202, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def poll_room(client: httpx.AsyncClient, url: str, request_id: str) -> dict[str, Any]:
    reply = await client.get(f"{url}/join/{request_id}")
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def poll_until(check: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
