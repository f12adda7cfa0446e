"""Helpers for the admin API: a server with an admin key, and making applications, keys and lines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from ..conftest import MockUpstream, Running, serve

ADMIN = {"X-API-Key": "the-super-admin-key-0123456789"}


@asynccontextmanager
async def admin_server(tmp_path: Path, upstream: MockUpstream, **overrides: Any) -> AsyncIterator[tuple[Running, str]]:
    """guestqueue with an admin key and a request log; yields it and the /api/v1 URL."""
    settings: dict[str, Any] = {
        "admin_api_key": ADMIN["X-API-Key"],
        "db_path": str(tmp_path / "guestqueue.db"),
        "upstream_url": upstream.url(chunks=1),
        # The operator lets lines made through the admin API reach the mock upstream on loopback.
        "outbound_allow": "127.0.0.0/8",
        **overrides,
    }
    async with serve(**settings) as running:
        yield running, running.base.removesuffix("/guest")


async def make_application(client: httpx.AsyncClient, api: str, name: str) -> str:
    created = await client.post(f"{api}/admin/applications", json={"name": name}, headers=ADMIN)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def make_key(client: httpx.AsyncClient, api: str, app: str, **body: Any) -> str:
    made = await client.post(f"{api}/admin/applications/{app}/keys", json=body, headers=ADMIN)
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


async def make_line(client: httpx.AsyncClient, api: str, **body: Any) -> dict[str, Any]:
    made = await client.post(f"{api}/admin/lines", json=body, headers=ADMIN)
    assert made.status_code == 201, made.text
    return dict(made.json())
