"""Library use: mount the API in your own app, pass a Python workflow (the examples, run for real)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

import guestqueue
from guestqueue import GuestQueue, Settings, WorkflowRequest

from .conftest import load_example, serve_app, stream_events


def test_public_api_is_exported() -> None:
    for name in guestqueue.__all__:
        assert hasattr(guestqueue, name), name
    assert {"GuestQueue", "Settings", "Chunk", "WorkflowRequest"} <= set(guestqueue.__all__)


async def test_starlette_mount_example() -> None:
    example = load_example("mount_starlette")
    async with serve_app(example.app) as base, httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{base}/")).json()["app"] == "mine"
        events = await stream_events(client, f"{base}/api/v1/guest/chat", json={"query": "hello there"})
        assert events[-1].name == "workflow_complete"
        assert events[-1].data["answer"] == "HELLO THERE "
        assert events[-1].data["suggested_questions"] == ["Can you whisper instead?"]


async def test_fastapi_mount_example() -> None:
    pytest.importorskip("fastapi", reason="the FastAPI example needs fastapi (in the test extras)")
    example = load_example("fastapi_app")
    async with serve_app(example.app) as base, httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(f"{base}/api/v1/guest/chat/simple", json={"query": "hi"})
        assert resp.status_code == 200 and resp.json()["answer"] == "You asked: hi"


async def test_two_apps_side_by_side_do_not_share_state() -> None:
    async def one(request: WorkflowRequest) -> AsyncIterator[str]:
        yield "one"

    async def two(request: WorkflowRequest) -> AsyncIterator[str]:
        yield "two"

    settings = Settings(upstream_interval_s=0, db_path="")
    first, second = GuestQueue(settings, workflow=one), GuestQueue(settings, workflow=two)
    async with serve_app(first.app) as a, serve_app(second.app) as b, httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(f"{a}/chat/simple", json={"query": "x"})).json()["answer"] == "one"
        assert (await client.post(f"{b}/chat/simple", json={"query": "x"})).json()["answer"] == "two"
        assert first.service is not None and second.service is not None
        assert first.service.stats.total_requests == 1 and second.service.stats.total_requests == 1


async def test_mounted_without_lifespan_says_so() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    guest = GuestQueue(Settings(db_path=""))
    app = Starlette(routes=[Mount("/g", app=guest.app)])  # lifespan forgotten
    async with serve_app(app) as base, httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(f"{base}/g/chat", json={"query": "hi"})
        assert resp.status_code == 503 and "lifespan" in resp.json()["error"]
