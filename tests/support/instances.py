"""Helpers for several guestqueue processes on one Redis: starting them, and streams that note their first event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from guestqueue.config import ENV_NAMES

from ..conftest import (
    FAST,
    Received,
    start_server_process,
)


def shared_instances(
    tmp_path: Path, count: int, redis_url: str, redis_prefix: str, **overrides: Any
) -> Iterator[list[str]]:
    settings = {**FAST, "redis_url": redis_url, "redis_prefix": redis_prefix, "instance_ttl_s": 2.0, **overrides}
    env = {ENV_NAMES[name]: str(value) for name, value in settings.items()}
    with ExitStack() as stack:
        bases = []
        for _ in range(count):
            server = start_server_process(tmp_path, **env)
            stack.callback(server.proc.wait, 15)
            stack.callback(server.proc.terminate)
            bases.append(server.base)
        yield bases


def tagged_body(query: str, tag: str, **mock: Any) -> dict[str, Any]:
    return {"query": query, "parameters": {"mock": {"tag": tag, **mock}}}


async def stream_noting(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], admitted: asyncio.Event
) -> list[Received]:
    """A whole stream; ``admitted`` is set at its first event."""
    events: list[Received] = []
    async with aconnect_sse(client, "POST", url, json=body) as source:
        async for sse in source.aiter_sse():
            if sse.data:
                events.append(Received(sse.event, sse.id, json.loads(sse.data)["data"]))
                admitted.set()
    return events
