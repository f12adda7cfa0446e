"""Writes from a page of another site are refused (origin.py; issue 20, point 4): with no admin key
the operator's browser is a local caller, so without this any page it has open could drive the
admin API with a ``text/plain`` POST, which browsers send without a CORS preflight."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from guestqueue import WorkflowRequest

from .conftest import guestqueue_process, serve, stream_events
from .support.programs import run_nginx

ALLOWED = "https://chat.example.org"
FOREIGN = "https://evil.example"


async def echo(request: WorkflowRequest) -> AsyncIterator[str]:
    yield f"you asked: {request.query}"


def _root(base: str) -> str:
    return base.split("/api/")[0]


async def _applications(client: httpx.AsyncClient, root: str) -> list[str]:
    listed = await client.get(f"{root}/api/v1/admin/applications")
    assert listed.status_code == 200, listed.text
    return [app["name"] for app in listed.json()["applications"]]


async def test_a_cross_origin_text_plain_post_does_not_make_an_application() -> None:
    async with serve(workflow=echo) as running, httpx.AsyncClient(timeout=10) as client:
        root = _root(running.base)
        # What a form or fetch() of any page sends: no preflight for text/plain.
        forged = await client.post(
            f"{root}/api/v1/admin/applications",
            content='{"name": "evil"}',
            headers={"Content-Type": "text/plain", "Origin": FOREIGN},
        )
        assert forged.status_code == 403, forged.text
        assert forged.json()["code"] == "forbidden" and set(forged.json()) == {"error", "code"}
        assert "access-control-allow-origin" not in forged.headers
        for origin in ("null", f"{root}.evil.example", root.replace("127.0.0.1", "localhost")):
            refused = await client.post(
                f"{root}/api/v1/admin/applications", json={"name": "evil"}, headers={"Origin": origin}
            )
            assert refused.status_code == 403, origin
        refused = await client.post(
            f"{root}/api/v1/admin/applications", json={"name": "evil"}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert refused.status_code == 403, "a browser that says cross-site but leaves Origin out"
        assert await _applications(client, root) == []


async def test_same_origin_listed_origin_and_no_origin_may_write() -> None:
    async with (
        serve(workflow=echo, cors_origins=f"https://other.example, {ALLOWED}") as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        root = _root(running.base)
        for name, headers in [
            ("own page", {"Origin": root}),  # http://127.0.0.1:PORT, as the Host header says
            ("own page behind TLS", {"Origin": root.replace("http://", "https://")}),
            ("listed", {"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site"}),
            ("not a browser", {}),
            ("same site", {"Origin": root, "Sec-Fetch-Site": "same-origin"}),
        ]:
            made = await client.post(f"{root}/api/v1/admin/applications", json={"name": name}, headers=headers)
            assert made.status_code == 201, (name, made.text)
        assert sorted(await _applications(client, root)) == sorted(
            ["own page", "own page behind TLS", "listed", "not a browser", "same site"]
        )


async def test_a_guest_of_a_listed_origin_still_asks_and_preflights() -> None:
    async with serve(workflow=echo, cors_origins=ALLOWED) as running, httpx.AsyncClient(timeout=10) as client:
        preflight = await client.options(
            f"{running.base}/chat",
            headers={
                "Origin": ALLOWED,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        events = await stream_events(
            client,
            f"{running.base}/chat",
            json={"query": "hi"},
            headers={"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site"},
        )
        assert events[-1].name == "workflow_complete" and events[-1].data["answer"] == "you asked: hi"
        stranger = await client.post(f"{running.base}/chat", json={"query": "hi"}, headers={"Origin": FOREIGN})
        assert stranger.status_code == 403 and stranger.json()["code"] == "forbidden"


@pytest.mark.parametrize(
    "method, path",
    [
        ("PUT", "/api/v1/admin/applications/app_x"),
        ("DELETE", "/api/v1/admin/applications/app_x"),
        ("PUT", "/api/v1/admin/lines/guest"),
        ("POST", "/api/v1/admin/lines/guest/purge"),
        ("DELETE", "/api/v1/guest/chat/some-request-id"),
        ("POST", "/api/v1/lines/guest/chat/simple"),
        ("POST", "/v1/chat/completions"),  # the OpenAI front door
        ("POST", "/api/v1/jobs/gpu.receipt/chunks"),  # a pull worker's reports
    ],
)
async def test_every_app_refuses_a_write_from_a_foreign_origin(method: str, path: str) -> None:
    async with serve(workflow=echo, cors_origins=ALLOWED) as running, httpx.AsyncClient(timeout=10) as client:
        root = _root(running.base)
        refused = await client.request(method, f"{root}{path}", json={"mode": "paused"}, headers={"Origin": FOREIGN})
        assert refused.status_code == 403, refused.text
        assert refused.json() == {"error": refused.json()["error"], "code": "forbidden"}
        assert running.guest.lineup is not None and running.guest.lineup.get("guest").spec.mode != "paused"
        read = await client.get(f"{root}/api/v1/guest/health", headers={"Origin": FOREIGN})
        assert read.status_code == 200, "reads are not refused (CORS decides who may see them)"


async def test_behind_nginx_the_pages_own_origin_may_write(tmp_path: Path) -> None:
    """nginx passes the Host the browser sent (with its port), so the page's own origin matches it."""
    with (
        guestqueue_process(tmp_path, trusted_proxies="127.0.0.1") as direct,
        run_nginx(tmp_path, direct, read_timeout=None) as proxied,
    ):
        root = _root(proxied)
        async with httpx.AsyncClient(timeout=10) as client:
            made = await client.post(
                f"{root}/api/v1/admin/applications", json={"name": "mine"}, headers={"Origin": root}
            )
            assert made.status_code == 201, made.text
            forged = await client.post(
                f"{root}/api/v1/admin/applications", json={"name": "evil"}, headers={"Origin": FOREIGN}
            )
            assert forged.status_code == 403 and forged.json()["code"] == "forbidden"
            assert await _applications(client, root) == ["mine"]
