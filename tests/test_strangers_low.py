"""Issue 20's lower findings: a pull worker's key sent in clear (point 15), JSON too deep for the
parser in a worker's NDJSON answer (point 11), admin writes while Redis is down or full (point 11)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from guestqueue.pull.worker import PullWorker
from guestqueue.upstream import WorkflowRequest

from .conftest import MockUpstream, stream_events
from .redis_server import run_redis
from .support.admin import ADMIN, admin_server, make_application, make_key, make_line
from .support.pull import worker_process

# -- point 15: the worker warns when its key would cross the network in clear ------------------


async def nothing(request: WorkflowRequest) -> AsyncIterator[str]:
    yield ""


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "guestqueue.worker" and r.levelno == logging.WARNING]


async def test_a_worker_warns_once_when_its_key_goes_over_plain_http_to_another_machine(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="guestqueue.worker")
    far = f"gpu-{uuid.uuid4().hex[:8]}.example"  # a name of its own: the warning is once per process
    for server in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", f"https://{far}"):
        await PullWorker(server, "gpu", "gq_key", nothing).aclose()
    assert _warnings(caplog) == []
    for _ in range(3):
        await PullWorker(f"http://{far}:8000/", "gpu", "gq_key", nothing).aclose()
    [warning] = _warnings(caplog)
    assert far in warning and "plain http://" in warning and "https://" in warning


def test_the_worker_command_says_so_on_its_log(tmp_path: Path) -> None:
    # 192.0.2.0/24 is for documentation: nothing answers there, the worker keeps trying.
    with worker_process(tmp_path, "http://192.0.2.10:9", "far", "echo"):
        log = tmp_path / "worker-far.log"
        deadline = time.monotonic() + 15
        while "plain http://" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    assert log.read_text().count("plain http://") == 1


# -- point 11: JSON too deep for the parser is a 4xx, never a 500 -----------------------------


async def test_a_worker_answer_nested_too_deep_is_refused_not_a_500(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=30) as client:
        app = await make_application(client, api, "gpus")
        await make_line(client, api, name="gpu", application_id=app, upstream_kind="pull", upstream_interval_sec=0)
        worker = {"Authorization": f"Bearer {await make_key(client, api, app, permissions={'gpu': ['WORK']})}"}
        asked = asyncio.create_task(stream_events(client, f"{api}/lines/gpu/chat", json={"query": "deep"}))
        taken = await client.post(f"{api}/lines/gpu/jobs/receive", json={"wait_sec": 5}, headers=worker)
        assert taken.status_code == 200, taken.text
        chunks = f"{api}/jobs/{taken.json()['jobs'][0]['receipt']}/chunks"
        ndjson = {**worker, "Content-Type": "application/x-ndjson"}
        for body in (
            b"[" * 5_000 + b"\n",  # a complete line
            b'"fine"\n' + b"[" * 5_000 + b"]" * 5_000,  # the last line, without its newline
            b'{"a": ' * 5_000 + b"1" + b"}" * 5_000 + b"\n",
        ):
            refused = await client.post(chunks, content=body, headers=ndjson)
            assert 400 <= refused.status_code < 500, refused.text
            assert refused.json()["code"] in ("invalid_field", "invalid_json"), refused.text
        listed = await client.post(
            chunks, content=b"[" * 5_000 + b"]" * 5_000, headers={**worker, "Content-Type": "application/json"}
        )
        assert listed.status_code == 400 and listed.json()["code"] == "invalid_json", listed.text
        for path in ("complete", "fail", "extend"):
            deep = await client.post(
                chunks.replace("chunks", path),
                content=b"[" * 5_000,
                headers={**worker, "Content-Type": "application/json"},
            )
            assert deep.status_code == 400 and deep.json()["code"] == "invalid_json", (path, deep.text)
        deep = await client.post(
            f"{api}/lines/gpu/jobs/receive",
            content=b'{"a":' * 5_000,
            headers={**worker, "Content-Type": "application/json"},
        )
        assert deep.status_code == 400 and deep.json()["code"] == "invalid_json", deep.text
        # The job is still the worker's: it answers, and the guest hears it.
        sent = await client.post(chunks, content=b'"still "\n"here"\n', headers=ndjson)
        assert sent.status_code == 200, sent.text
        done = await client.post(chunks.replace("chunks", "complete"), headers=worker)
        assert done.status_code == 200, done.text
        events = await asked
        assert events[-1].name == "workflow_complete", events[-1]
        assert events[-1].data["answer"].endswith("still here")


# -- point 11: admin writes while Redis is down or full are a 503, and change nothing ----------


def _stored_names(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "guestqueue.db") as db:
        return sorted(json.loads(body)["name"] for (body,) in db.execute("SELECT body FROM applications"))


async def _names(client: httpx.AsyncClient, api: str) -> list[str]:
    listed = await client.get(f"{api}/admin/applications", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    return sorted(app["name"] for app in listed.json()["applications"])


def _writes(app: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("POST", "/admin/applications", {"name": "during"}),
        ("PUT", f"/admin/applications/{app}", {"name": "renamed"}),
        ("POST", f"/admin/applications/{app}/keys", {"permissions": {"*": ["READ"]}}),
        ("POST", "/admin/lines", {"name": "fresh", "application_id": app}),
        ("DELETE", f"/admin/applications/{app}", None),
    ]


async def _refused(client: httpx.AsyncClient, api: str, app: str) -> None:
    for method, path, body in _writes(app):
        reply = await client.request(method, f"{api}{path}", json=body, headers=ADMIN)
        assert reply.status_code == 503, (method, path, reply.text)
        assert reply.json()["code"] == "unavailable" and "127.0.0.1" not in reply.text, reply.text
        assert int(reply.headers["retry-after"]) >= 1
    assert await _names(client, api) == ["before"], "nothing changed here either"
    keys = await client.get(f"{api}/admin/applications/{app}/keys", headers=ADMIN)
    assert keys.json()["keys"] == []


async def test_admin_writes_while_redis_is_down_answer_503_and_change_nothing(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    with run_redis() as server:
        shared = {"redis_url": server.url, "redis_prefix": f"down-{uuid.uuid4().hex[:8]}"}
        async with admin_server(tmp_path, upstream, **shared) as (_, api), httpx.AsyncClient(timeout=30) as client:
            app = await make_application(client, api, "before")
            server.stop()
            try:
                await _refused(client, api, app)
            finally:
                server.start()
    assert _stored_names(tmp_path) == ["before"]


async def test_admin_writes_while_redis_is_out_of_memory_answer_503_and_change_nothing(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    with run_redis() as server:
        shared = {"redis_url": server.url, "redis_prefix": f"full-{uuid.uuid4().hex[:8]}"}
        async with admin_server(tmp_path, upstream, **shared) as (_, api), httpx.AsyncClient(timeout=30) as client:
            app = await make_application(client, api, "before")
            control = aioredis.Redis.from_url(server.url)
            try:
                await control.config_set("maxmemory-policy", "noeviction")
                await control.config_set("maxmemory", 1)
                await _refused(client, api, app)
                await control.config_set("maxmemory", 0)
                await make_application(client, api, "after")
                assert await _names(client, api) == ["after", "before"]
            finally:
                await control.config_set("maxmemory", 0)
                await control.aclose()
    assert _stored_names(tmp_path) == ["after", "before"]
