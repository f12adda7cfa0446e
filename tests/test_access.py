"""Admin key on status, history, request lookup and metrics; CORS for the configured origins."""

from __future__ import annotations

import httpx

from .conftest import MockUpstream, serve

ADMIN_PATHS = ["/queue/status", "/queue/history", "/metrics"]


async def test_admin_key_protects_status_history_lookup_and_metrics(upstream: MockUpstream) -> None:
    async with serve(upstream_url=upstream.url(), admin_api_key="s3cret") as running, \
            httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(f"{running.base}/chat/simple", json={"query": "chat stays open"})
        assert answer.status_code == 200
        paths = [*ADMIN_PATHS, f"/queue/request/{answer.json()['request_id']}"]
        for path in paths:
            missing = await client.get(f"{running.base}{path}")
            assert missing.status_code == 401 and missing.json()["code"] == "unauthorized", path
            wrong = await client.get(f"{running.base}{path}", headers={"X-API-Key": "guess"})
            assert wrong.status_code == 403 and wrong.json()["code"] == "forbidden", path
            right = await client.get(f"{running.base}{path}", headers={"X-API-Key": "s3cret"})
            assert right.status_code == 200, path
        assert (await client.get(f"{running.base}/health")).status_code == 200


async def test_no_admin_key_means_open_status(upstream: MockUpstream) -> None:
    async with serve(upstream_url=upstream.url()) as running, httpx.AsyncClient(timeout=10) as client:
        for path in ADMIN_PATHS:
            assert (await client.get(f"{running.base}{path}")).status_code == 200


async def test_cors_for_exactly_the_configured_origins(upstream: MockUpstream) -> None:
    allowed = "https://chat.example.org"
    async with serve(upstream_url=upstream.url(), cors_origins=f"{allowed}, https://other.example.org") as running, \
            httpx.AsyncClient(timeout=10) as client:
        preflight = await client.options(f"{running.base}/chat", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        })
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        resp = await client.post(f"{running.base}/chat/simple", json={"query": "hi"}, headers={"Origin": allowed})
        assert resp.headers["access-control-allow-origin"] == allowed
        assert "x-request-id" in resp.headers["access-control-expose-headers"].lower()
        stranger = await client.post(
            f"{running.base}/chat/simple", json={"query": "hi"}, headers={"Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in stranger.headers
        denied = await client.options(f"{running.base}/chat", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
        })
        assert denied.status_code == 400
