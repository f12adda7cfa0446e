"""outbound.py: URLs that tenants set reach only what the operator allows (issue 20 point 5).

A tenant's line upstream on a loopback address let its guest read an internal service's answer;
with no admin key, a tenant's webhook POSTed to guestqueue's own admin API, was taken as a local
caller, and purged another tenant's line. Checked here on the address actually connected to
(through real aiohttp connections), and end to end with two instances on a real redis-server and
a real receiver on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from guestqueue import Settings
from guestqueue.outbound import OUTBOUND_HEADER, GuardedResolver, OutboundPolicy
from guestqueue.upstream import make_http_client

from .conftest import MockUpstream, ask, serve, serve_app, wait_until

SECRET = "a-webhook-secret-of-some-length"


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("10.0.0.7", True),
        ("172.16.3.4", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("::ffff:127.0.0.1", True),
        ("93.184.216.34", False),
        ("2606:4700::1111", False),
    ],
)
def test_internal_addresses_are_refused_unless_allowed(address: str, refused: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert (OutboundPolicy().refusal(ip) is not None) is refused
    allowed = OutboundPolicy([ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")])
    assert allowed.refusal(ip) is None
    assert OutboundPolicy(everything=True).refusal(ip) is None


def test_this_servers_own_public_address_is_refused() -> None:
    own = ipaddress.ip_address("93.184.216.34")
    assert OutboundPolicy(own=[own]).refusal(own) == "93.184.216.34 is this server's own address"


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "localhost", "[::1]"])
def test_every_spelling_of_loopback_in_a_url_is_refused(host: str) -> None:
    assert OutboundPolicy().refuses_url(f"http://{host}:8080/chat") is not None


async def test_the_resolver_keeps_only_addresses_the_rule_allows() -> None:
    """DNS may answer otherwise at the connect than at the check: the resolver aiohttp connects
    through drops refused addresses there."""
    resolver = GuardedResolver(OutboundPolicy())
    with pytest.raises(OSError, match="localhost is not reachable"):
        await resolver.resolve("localhost", 80, socket.AF_INET)
    await resolver.close()
    open_resolver = GuardedResolver(OutboundPolicy([ipaddress.ip_network("127.0.0.0/8")]))
    assert {result["host"] for result in await open_resolver.resolve("localhost", 80, socket.AF_INET)} == {"127.0.0.1"}
    await open_resolver.close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "2130706433", "127.1"])
async def test_the_guarded_client_never_connects_where_the_rule_refuses(host: str, upstream: MockUpstream) -> None:
    url, tag = upstream.tagged(chunks=1)
    url = url.replace("127.0.0.1", host)
    refused = make_http_client(Settings(db_path=""), OutboundPolicy())
    allowed = make_http_client(Settings(db_path=""), OutboundPolicy([ipaddress.ip_network("127.0.0.0/8")]))
    try:
        with pytest.raises(httpx.TransportError):
            await refused.post(url, json={"query": "q"})
        assert await upstream.acalls(tag) == [], "the refused request reached the upstream"
        if host in ("localhost", "127.0.0.1"):  # (aiohttp itself connects to no other spelling of an address)
            answer = await allowed.post(url, json={"query": "q"})
            assert answer.status_code == 200 and len(await upstream.acalls(tag)) == 1
    finally:
        await refused.aclose()
        await allowed.aclose()


async def test_a_request_guestqueue_makes_is_never_a_local_caller(upstream: MockUpstream) -> None:
    async with serve(upstream_url=upstream.url(chunks=1)) as running, httpx.AsyncClient(timeout=10) as client:
        metrics = running.base + "/metrics"
        assert (await client.get(metrics)).status_code == 200, "a local caller reads the operator's views"
        marked = await client.get(metrics, headers={OUTBOUND_HEADER: "1"})
        assert marked.status_code == 403


class Receiver:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def hook(self, request: Request) -> Response:
        self.seen.append(await request.json())
        return JSONResponse({"ok": True})


async def test_tenants_urls_cannot_reach_inside_across_two_instances(
    tmp_path: Path,
    upstream: MockUpstream,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Two instances on one redis-server, no admin key (the default: a local caller is the super
    admin), two tenants; tenant A aims its upstream and webhooks inside."""
    receiver = Receiver()
    async with serve_app(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as hooks:
        shared: dict[str, Any] = {
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
            "upstream_url": upstream.url(chunks=1),
            "webhook_backoff_s": 0.05,
        }
        async with (
            serve(db_path=str(tmp_path / "one.db"), **shared) as one,
            serve(db_path=str(tmp_path / "two.db"), **shared) as two,
            httpx.AsyncClient(timeout=10) as client,
        ):
            api_one, api_two = (r.base.removesuffix("/guest") for r in (one, two))
            keys = []
            for name in ("a", "b"):
                app = (await client.post(f"{api_one}/admin/applications", json={"name": name})).json()["id"]
                made = await client.post(f"{api_one}/admin/applications/{app}/keys", json={"role": "admin"})
                keys.append(({"X-API-Key": made.json()["key"]}, app))
            (a_key, a_app), (b_key, b_app) = keys
            await wait_until(lambda: two.guest.catalog.keys.keys() == one.guest.catalog.keys.keys(), 5, "the keys")
            made = await client.post(
                f"{api_one}/admin/lines",
                headers=b_key,
                json={"name": "b-line", "application_id": b_app, "upstream_kind": "pull"},
            )
            assert made.status_code == 201, made.text
            internal = upstream.url(chunks=1)
            for url in (internal, internal.replace("127.0.0.1", "localhost"), internal.replace("127.0.0.1", "127.1")):
                refused = await client.post(
                    f"{api_two}/admin/lines",
                    headers=a_key,
                    json={"name": "a-line", "application_id": a_app, "upstream_url": url},
                )
                assert refused.status_code == 422 and "GUEST_OUTBOUND_ALLOW" in refused.json()["error"], url
            purge = f"{api_one}/admin/lines/b-line/purge"
            for url in (purge, f"{hooks}/hook"):
                refused = await client.post(
                    f"{api_two}/admin/lines",
                    headers=a_key,
                    json={
                        "name": "a-line",
                        "application_id": a_app,
                        "upstream_kind": "pull",
                        "webhooks": [{"url": url, "events": ["completed"], "secret": SECRET}],
                    },
                )
                assert refused.status_code == 422 and "webhooks[0]" in refused.json()["error"], url
            await asyncio.sleep(0.5)
            assert (await client.get(f"{api_one}/admin/lines/b-line")).json()["purged_at"] == 0
            assert receiver.seen == []


async def test_with_the_operators_leave_a_tenants_webhook_arrives_but_is_no_local_caller(
    tmp_path: Path,
    upstream: MockUpstream,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """GUEST_OUTBOUND_ALLOW lets tenants' URLs reach loopback (a receiver there): deliveries arrive,
    and one aimed at guestqueue's own admin API is refused there (401), not obeyed."""
    receiver = Receiver()
    async with serve_app(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as hooks:
        shared: dict[str, Any] = {
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
            "upstream_url": upstream.url(chunks=1),
            "webhook_backoff_s": 0.05,
            "outbound_allow": "127.0.0.0/8",
        }
        async with (
            serve(db_path=str(tmp_path / "one.db"), **shared) as one,
            serve(db_path=str(tmp_path / "two.db"), **shared) as two,
            httpx.AsyncClient(timeout=10) as client,
        ):
            api_one, api_two = (r.base.removesuffix("/guest") for r in (one, two))
            app = (await client.post(f"{api_one}/admin/applications", json={"name": "a"})).json()["id"]
            key = {
                "X-API-Key": (
                    await client.post(f"{api_one}/admin/applications/{app}/keys", json={"role": "admin"})
                ).json()["key"]
            }
            await wait_until(lambda: two.guest.catalog.keys.keys() == one.guest.catalog.keys.keys(), 5, "the key")
            victim = await client.post(f"{api_one}/admin/lines", json={"name": "victim", "upstream_kind": "pull"})
            assert victim.status_code == 201
            hooks_list = [
                {"url": f"{hooks}/hook", "events": ["completed"], "secret": SECRET},
                {"url": f"{api_one}/admin/lines/victim/purge", "events": ["completed"], "secret": SECRET},
            ]
            made = await client.post(
                f"{api_two}/admin/lines",
                headers=key,
                json={
                    "name": "a-line",
                    "application_id": app,
                    "upstream_url": upstream.url(chunks=1),
                    "webhooks": hooks_list,
                },
            )
            assert made.status_code == 201, made.text
            lines = two.base.replace("/guest", "/lines")
            events = await ask(client, f"{lines}/a-line")
            assert events[-1].name == "workflow_complete", "the tenant's loopback upstream was allowed"
            await wait_until(lambda: len(receiver.seen) == 1, 10, "the receiver's delivery")
            outbox = one.guest.admin.outbox
            two_outbox = two.guest.admin.outbox
            assert outbox is not None and two_outbox is not None
            await wait_until(
                lambda: outbox.results["failed"] + two_outbox.results["failed"] == 1,
                10,
                "the purge delivery refused (401) every time",
            )
            assert (await client.get(f"{api_one}/admin/lines/victim")).json()["purged_at"] == 0
