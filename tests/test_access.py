"""Who may read what (access.py): a request id is its guest's bearer secret, the operator's views
need the admin key or a local caller, wrong keys are throttled; upstream details stay private; CORS.

A "remote" caller on this one machine: guestqueue trusts 127.0.0.1 as its proxy and the test sends
``X-Forwarded-For`` with a documentation address, as nginx would for a guest on the internet."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guestqueue import Chunk, WorkflowRequest
from guestqueue.tickets import new_request_id

from .conftest import MockUpstream, ask, serve

ADMIN_KEY = "admin-key-of-20-chars"
OPERATOR_PATHS = ["/queue/history", "/metrics"]
STATUS_PATHS = ["/queue/status", "/queue/status/samples"]
GUEST_A = {"X-Forwarded-For": "198.51.100.1"}
GUEST_B = {"X-Forwarded-For": "203.0.113.7"}


async def test_admin_key_protects_history_and_metrics_and_not_a_guests_own_request(upstream: MockUpstream) -> None:
    async with (
        serve(upstream_url=upstream.url(), admin_api_key=ADMIN_KEY) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        answer = await client.post(f"{running.base}/chat/simple", json={"query": "chat stays open"})
        assert answer.status_code == 200
        for path in OPERATOR_PATHS:
            missing = await client.get(f"{running.base}{path}")
            assert missing.status_code == 401 and missing.json()["code"] == "unauthorized", path
            wrong = await client.get(f"{running.base}{path}", headers={"X-API-Key": "guess-guess-guess"})
            assert wrong.status_code == 403 and wrong.json()["code"] == "forbidden", path
            right = await client.get(f"{running.base}{path}", headers={"X-API-Key": ADMIN_KEY})
            assert right.status_code == 200, path
        # The guest's own id is its credential: no admin key needed to read it.
        own = await client.get(f"{running.base}/queue/request/{answer.json()['request_id']}")
        assert own.status_code == 200 and own.json()["status"] == "completed"
        for path in ["/health", *STATUS_PATHS]:
            assert (await client.get(f"{running.base}{path}")).status_code == 200, path


async def test_status_needs_the_key_only_when_it_is_not_public(upstream: MockUpstream) -> None:
    async with (
        serve(upstream_url=upstream.url(), admin_api_key=ADMIN_KEY, public_status=False) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        for path in [*STATUS_PATHS, "/queue/status/stream"]:
            assert (await client.get(f"{running.base}{path}")).status_code == 401, path
        for path in STATUS_PATHS:
            assert (await client.get(f"{running.base}{path}", headers={"X-API-Key": ADMIN_KEY})).status_code == 200


async def test_no_admin_key_means_local_callers_only(upstream: MockUpstream) -> None:
    async with (
        serve(upstream_url=upstream.url(), trusted_proxies="127.0.0.1") as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        for path in OPERATOR_PATHS:
            assert (await client.get(f"{running.base}{path}")).status_code == 200, path  # loopback, no proxy
            # nginx on this host, for a local caller: the forwarded address is loopback too.
            local = await client.get(f"{running.base}{path}", headers={"X-Forwarded-For": "127.0.0.1"})
            assert local.status_code == 200, path
            remote = await client.get(f"{running.base}{path}", headers=GUEST_B)
            assert remote.status_code == 403 and remote.json()["code"] == "forbidden", path
            assert "GUEST_ADMIN_API_KEY" in remote.json()["error"]
        for path in STATUS_PATHS:
            assert (await client.get(f"{running.base}{path}", headers=GUEST_B)).status_code == 200, path


@pytest.mark.parametrize("header", ["X-Forwarded-For", "X-Real-IP", "Forwarded"])
async def test_forwarded_from_an_untrusted_proxy_on_loopback_is_not_local(upstream: MockUpstream, header: str) -> None:
    # nginx on the same host, but GUEST_TRUSTED_PROXIES unset: every peer is 127.0.0.1, and the
    # forwarding header says a proxy stands between guestqueue and the real caller.
    value = "for=203.0.113.7" if header == "Forwarded" else "203.0.113.7"
    async with serve(upstream_url=upstream.url()) as running, httpx.AsyncClient(timeout=10) as client:
        for path in OPERATOR_PATHS:
            resp = await client.get(f"{running.base}{path}", headers={header: value})
            assert resp.status_code == 403, (path, header)
    async with (
        serve(upstream_url=upstream.url(), public_status=False) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        assert (await client.get(f"{running.base}/queue/status", headers={header: value})).status_code == 403
        assert (await client.get(f"{running.base}/queue/status")).status_code == 200


async def _everything_b_can_read(client: httpx.AsyncClient, base: str, headers: dict[str, str]) -> str:
    """The bodies of every GET a second client can send, concatenated."""
    bodies = []
    for path in ["/", "/health", *STATUS_PATHS, *OPERATOR_PATHS, f"/queue/request/{new_request_id()}"]:
        bodies.append((await client.get(f"{base}{path}", headers=headers)).text)
    async with client.stream("GET", f"{base}/queue/status/stream", headers=headers) as stream:
        async for text in stream.aiter_text():
            bodies.append(text)
            break
    return "\n".join(bodies)


@pytest.mark.parametrize("admin_api_key", ["", ADMIN_KEY])
async def test_a_second_client_cannot_read_resume_or_cancel_the_first_clients_request(
    upstream: MockUpstream, admin_api_key: str
) -> None:
    # /queue/history used to list every request id, to anyone: and an id is all it takes to read,
    # replay and cancel a guest's conversation.
    settings: dict[str, Any] = {"trusted_proxies": "127.0.0.1", "admin_api_key": admin_api_key}
    async with (
        serve(upstream_url=upstream.url(first=1.0), **settings) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        first = asyncio.ensure_future(ask(client, running.base, "my private question", headers=GUEST_A))
        service = running.guest.service
        assert service is not None
        while not service.registry.live():
            await asyncio.sleep(0.01)
        request_id = service.registry.live()[0].id
        seen = await _everything_b_can_read(client, running.base, {**GUEST_B, "X-API-Key": "not-the-key-at-all"})
        assert request_id not in seen and "my private question" not in seen
        guessed = new_request_id()
        for method, path in [
            ("GET", f"/chat/{guessed}/events"),
            ("GET", f"/queue/request/{guessed}"),
            ("DELETE", f"/chat/{guessed}"),
        ]:
            resp = await client.request(method, f"{running.base}{path}", headers=GUEST_B)
            assert resp.status_code == 404, path
        events = await first
        assert events[-1].name == "workflow_complete", "the first guest's request was not disturbed"
        own = await client.get(f"{running.base}/queue/request/{request_id}", headers=GUEST_A)
        assert own.status_code == 200 and own.json()["status"] == "completed"  # its holder may read it


async def test_wrong_admin_keys_are_throttled_per_client(upstream: MockUpstream) -> None:
    async with (
        serve(upstream_url=upstream.url(), admin_api_key=ADMIN_KEY, trusted_proxies="127.0.0.1") as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = f"{running.base}/queue/history"
        codes = [
            (await client.get(url, headers={**GUEST_B, "X-API-Key": f"guess-{n:012d}"})).status_code for n in range(8)
        ]
        assert codes == [403] * 5 + [429] * 3
        refused = await client.get(url, headers={**GUEST_B, "X-API-Key": ADMIN_KEY})
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_attempts"
        assert refused.headers["retry-after"] == "1"
        # Another client is not held back by the guesser.
        assert (await client.get(url, headers={**GUEST_A, "X-API-Key": ADMIN_KEY})).status_code == 200
        await asyncio.sleep(1.1)
        assert (await client.get(url, headers={**GUEST_B, "X-API-Key": ADMIN_KEY})).status_code == 200


async def test_a_utf8_admin_key_is_accepted_as_sent(upstream: MockUpstream) -> None:
    key = "ключ-администратора"
    async with (
        serve(upstream_url=upstream.url(), admin_api_key=key) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        right = await client.get(f"{running.base}/metrics", headers={b"X-API-Key": key.encode()})
        assert right.status_code == 200
        wrong = await client.get(f"{running.base}/metrics", headers={b"X-API-Key": (key[:-1] + "я").encode()})
        assert wrong.status_code == 403


SECRET = "Traceback: db password=hunter2 at 10.1.2.3:5432"


async def leaky_workflow(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
    raise RuntimeError(SECRET)
    yield ""


@pytest.mark.parametrize("source", ["http", "python"])
async def test_upstream_error_details_stay_out_of_public_views(
    upstream: MockUpstream, tmp_path: Path, source: str
) -> None:
    # An upstream's 401 body, or a workflow's exception text, used to be shown by /queue/history and
    # /queue/request/{id}: to every guest holding an id, and (history) to everyone.
    db = tmp_path / "log.db"
    if source == "http":
        settings: dict[str, Any] = {"upstream_url": upstream.url(mode="status", status=401)}
        secret = "upstream says no"  # the mock upstream's 401 body
    else:
        settings, secret = {"workflow": leaky_workflow}, SECRET
    async with serve(db_path=str(db), **settings) as running, httpx.AsyncClient(timeout=10) as client:
        events = await ask(client, running.base, "hello")
        assert events[-1].name == "error" and secret not in str(events[-1].data)
        request_id = events[-1].data["request_id"]
        own = (await client.get(f"{running.base}/queue/request/{request_id}")).json()
        history = (await client.get(f"{running.base}/queue/history")).text
        assert own["error"] == events[-1].data["error"] and own["error_code"] == events[-1].data["code"]
        assert secret not in str(own) and secret not in history
    with sqlite3.connect(db) as conn:
        (logged,) = conn.execute("SELECT error FROM requests WHERE request_id = ?", (request_id,)).fetchone()
    assert secret in logged, "the operator's log keeps the detail"


async def test_cors_for_exactly_the_configured_origins(upstream: MockUpstream) -> None:
    allowed = "https://chat.example.org"
    async with (
        serve(upstream_url=upstream.url(), cors_origins=f"{allowed}, https://other.example.org") as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        preflight = await client.options(
            f"{running.base}/chat",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        resp = await client.post(f"{running.base}/chat/simple", json={"query": "hi"}, headers={"Origin": allowed})
        assert resp.headers["access-control-allow-origin"] == allowed
        assert "x-request-id" in resp.headers["access-control-expose-headers"].lower()
        stranger = await client.post(
            f"{running.base}/chat/simple", json={"query": "hi"}, headers={"Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in stranger.headers
        denied = await client.options(
            f"{running.base}/chat",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert denied.status_code == 400
