"""The repository's nginx.conf, run by a real nginx in front of a real guestqueue process.

The conf file is the one users run; the test only substitutes ports (and, for
one fixture, a short proxy_read_timeout) and runs nginx with a temporary prefix.
Guests connect from different loopback addresses (127.0.0.2, 127.0.0.3, …) so
that nginx's per-address limits and guestqueue's per-client limit can tell them
apart, exactly as for guests on different machines.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from httpx_sse import aconnect_sse

from .conftest import MockUpstream, guestqueue_process
from .support.programs import NGINX_CONF, nginx_binary, run_nginx

# The read timeout the proxied stack runs with: shorter than the quiet stretch the
# ping test waits through (4 s), so only pings can keep that stream open.
SHORT_READ_TIMEOUT = "2s"


@dataclass
class Stack:
    nginx: str  # http://127.0.0.1:PORT/api/v1/guest, through nginx
    direct: str  # the same guestqueue, without nginx
    prefix: Path


@pytest.fixture(scope="module")
def stack(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = tmp_path_factory.mktemp("nginx")
    with (
        guestqueue_process(
            prefix,
            upstream_url=upstream.url(),
            upstream_kind="http",
            trusted_proxies="127.0.0.1",
            ping_s=0.5,
            max_per_client=1,
            max_concurrent_requests=4,
        ) as direct,
        run_nginx(prefix, direct, read_timeout=SHORT_READ_TIMEOUT) as proxied,
    ):
        yield Stack(proxied, direct, prefix)


def client_from(address: str, **kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``address`` (any 127.x.y.z works on Linux)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(20.0), **kwargs)


@dataclass
class Timeline:
    events: list[tuple[float, str, Any]]  # (seconds since the request, name, data)
    pings: int
    ended_s: float

    def first(self, name: str) -> float:
        return next(t for t, n, _ in self.events if n == name)

    @property
    def names(self) -> list[str]:
        return [n for _, n, _ in self.events]


async def timed_stream(client: httpx.AsyncClient, url: str, **kwargs: Any) -> Timeline:
    """Read one SSE stream line by line, noting when each event (and each ping) arrived."""
    started = time.monotonic()
    events: list[tuple[float, str, Any]] = []
    pings = 0
    async with client.stream("POST", url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith(":"):
                pings += 1
            elif line.startswith("data:"):
                envelope = json.loads(line[5:])
                events.append((time.monotonic() - started, envelope["event"], envelope["data"]))
    return Timeline(events, pings, time.monotonic() - started)


def ask_body(query: str, **mock: Any) -> dict[str, Any]:
    return {"query": query, "parameters": {"mock": mock}}


def test_the_repository_conf_is_valid_as_shipped(tmp_path: Path) -> None:
    result = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(NGINX_CONF)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


async def test_answer_chunks_are_not_buffered(stack: Stack) -> None:
    async with client_from("127.0.0.1") as client:
        timeline = await timed_stream(client, f"{stack.nginx}/chat", json=ask_body("unbuffered?", chunks=5, delay=0.8))
    assert timeline.names[-1] == "workflow_complete"
    first_chunk_s = timeline.first("answer_chunk")
    print(f"\nthrough nginx: first answer_chunk after {first_chunk_s:.2f} s, end after {timeline.ended_s:.2f} s")
    # The upstream spends 4 x 0.8 s between its five chunks: anything buffering the
    # response would hold the first chunk back until (nearly) the end.
    assert first_chunk_s < 1.5
    assert timeline.ended_s - first_chunk_s > 2.5
    chunk_times = [t for t, n, _ in timeline.events if n == "answer_chunk"]
    assert all(b - a > 0.4 for a, b in itertools.pairwise(chunk_times)), chunk_times


async def test_pings_keep_a_quiet_stream_past_the_read_timeout(stack: Stack) -> None:
    # The upstream is silent for 4 s, twice the substituted proxy_read_timeout (2 s).
    async with client_from("127.0.0.1") as client:
        timeline = await timed_stream(client, f"{stack.nginx}/chat", json=ask_body("still there?", first=4))
    assert timeline.names[-1] == "workflow_complete", timeline.names
    assert timeline.ended_s > 4.0
    assert timeline.pings >= 4  # every 0.5 s of silence


async def test_without_pings_nginx_cuts_the_same_stream(upstream: MockUpstream, tmp_path: Path) -> None:
    """The control for the test above: same nginx conf, guestqueue pinging only every 60 s."""
    with (
        guestqueue_process(tmp_path, upstream_url=upstream.url(), upstream_kind="http", ping_s=60) as direct,
        run_nginx(tmp_path, direct, read_timeout=SHORT_READ_TIMEOUT) as proxied,
    ):
        async with client_from("127.0.0.1") as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await timed_stream(client, f"{proxied}/chat", json=ask_body("cut off?", first=4))
        assert "upstream timed out" in (tmp_path / "error.log").read_text()


async def test_an_oversized_body_is_refused_by_nginx(stack: Stack) -> None:
    def body_of(size: int) -> bytes:
        head, tail = b'{"query": "', b'"}'
        return head + b"x" * (size - len(head) - len(tail)) + tail

    headers = {"Content-Type": "application/json"}
    async with client_from("127.0.0.4") as client:
        too_big = await client.post(f"{stack.nginx}/chat", content=body_of(65537), headers=headers)
        at_limit = await client.post(f"{stack.nginx}/chat", content=body_of(65536), headers=headers)
    assert too_big.status_code == 413
    assert too_big.json() == {
        "error": "The request body is larger than 65536 bytes.",
        "code": "body_too_large",
        "by": "nginx",
    }
    # Exactly GUEST_MAX_BODY_BYTES gets through nginx; guestqueue then refuses the long query itself.
    assert at_limit.status_code == 422
    assert at_limit.json()["code"] == "invalid_field"


async def test_guestqueue_sees_the_guests_real_address(stack: Stack) -> None:
    """GUEST_MAX_PER_CLIENT=1 behind nginx: keyed on the guest's address, which a guest cannot forge."""
    async with client_from("127.0.0.2") as guest_a, client_from("127.0.0.3") as guest_b:
        url = f"{stack.nginx}/chat"
        async with guest_a.stream(
            "POST", url, json=ask_body("first", first=3), headers={"X-Forwarded-For": "203.0.113.7"}
        ) as first:
            assert first.status_code == 200
            # Another address is another guest, although nginx itself is one peer (127.0.0.1).
            other = await guest_b.post(f"{url}/simple", json=ask_body("other guest"))
            assert other.status_code == 200, other.text
            # The same address claiming to be someone else is still the same guest.
            again = await guest_a.post(url, json=ask_body("second"), headers={"X-Forwarded-For": "198.51.100.9"})
            assert again.status_code == 429
            assert again.json()["code"] == "client_limit"
            await first.aread()


async def test_too_many_requests_from_one_address_get_429(stack: Stack) -> None:
    async with client_from("127.0.0.5") as client:
        statuses = []
        for _ in range(80):
            response = await client.get(f"{stack.nginx}/health")
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.json()["code"] == "rate_limited"
                assert response.headers["Retry-After"] == "1"
    assert statuses[0] == 200
    assert statuses.count(429) >= 10, statuses
    assert set(statuses) == {200, 429}  # 429, not nginx's default 503
    async with client_from("127.0.0.6") as neighbour:
        assert (await neighbour.get(f"{stack.nginx}/health")).status_code == 200  # per address


async def test_too_many_open_streams_from_one_address_get_429(stack: Stack) -> None:
    # Status streams: guestqueue itself caps a guest's chat streams (3 per request, GUEST_MAX_PER_CLIENT x 3
    # per client) before nginx's limit_conn of 20 would be reached.
    async with client_from("127.0.0.7", limits=httpx.Limits(max_connections=40)) as client:
        url = f"{stack.nginx}/queue/status/stream"
        streams = [client.stream("GET", url) for _ in range(20)]
        opened = [await s.__aenter__() for s in streams]
        try:
            assert {r.status_code for r in opened} == {200}
            over = await client.get(url)
            assert over.status_code == 429
            assert over.json()["code"] == "rate_limited"
        finally:
            for s in streams:
                await s.__aexit__(None, None, None)


async def test_websocket_through_nginx(stack: Stack) -> None:
    ws_url = stack.nginx.replace("http://", "ws://") + "/ws"
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps(ask_body("over a websocket", chunks=2)))
        messages = [json.loads(m) async for m in ws]
    assert [m["type"] for m in messages][-3:] == ["answer_chunk", "answer_chunk", "result"]
    assert messages[-1]["data"]["answer"] == "chunk0 chunk1 "


async def _slowloris(address: str, port: int, stop: asyncio.Event) -> float | None:
    """Send a request's headers one byte at a time; return when nginx closed us (seconds), or None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    began = time.monotonic()
    header = b"GET /api/v1/guest/health HTTP/1.1\r\nHost: guests.example\r\nX-Slow: " + b"a" * 200
    try:
        for byte in header:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if not await asyncio.wait_for(reader.read(1024), timeout=0.25):
                    return time.monotonic() - began  # EOF: nginx hung up
            except TimeoutError:
                pass
            except ConnectionError:
                return time.monotonic() - began
            if stop.is_set():
                return None
        return None
    except ConnectionError:
        return time.monotonic() - began
    finally:
        writer.close()


async def test_slow_clients_are_cut_and_normal_guests_unaffected(upstream: MockUpstream, tmp_path: Path) -> None:
    """Slowloris through nginx: headers dribbled a byte at a time are cut at client_header_timeout
    (1 s here, 10 s as shipped), while guests beside them are served as usual."""
    with (
        guestqueue_process(
            tmp_path, upstream_url=upstream.url(chunks=3, delay=0.1), upstream_kind="http", trusted_proxies="127.0.0.1"
        ) as direct,
        run_nginx(tmp_path, direct, read_timeout=None, header_timeout="1s") as proxied,
    ):
        port = urlsplit(proxied).port
        assert port is not None
        stop = asyncio.Event()
        slow = [asyncio.create_task(_slowloris(f"127.0.9.{i}", port, stop)) for i in range(1, 41)]
        await asyncio.sleep(0.5)
        began = time.monotonic()
        async with client_from("127.0.1.1") as client:
            normal = await asyncio.gather(
                *(timed_stream(client, f"{proxied}/chat", json={"query": f"normal {i}"}) for i in range(5))
            )
        served_in = time.monotonic() - began
        cut = await asyncio.wait_for(asyncio.gather(*slow), timeout=15)
        stop.set()
    assert all(t.events[-1][1] == "workflow_complete" for t in normal)
    assert served_in < 5, f"normal guests took {served_in:.1f}s beside the slow ones"
    assert all(c is not None and c < 1 + 1.5 for c in cut), cut


@pytest.mark.parametrize("path", ["/queue/history", "/metrics", "/queue/%68istory", "//queue//history", "/metrics/"])
async def test_the_operator_views_answer_only_the_allow_listed_network(stack: Stack, path: str) -> None:
    # /queue/history lists request ids, each a guest's only credential: nginx used to pass it to anyone.
    async with client_from("127.0.0.2") as outsider:
        refused = await outsider.get(f"{stack.nginx}{path}")
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json() == {
            "error": "This address may not use this endpoint.",
            "code": "forbidden",
            "by": "nginx",
        }
        # What guests need still passes: the public status, and a lookup by id (404 for a guessed one).
        assert (await outsider.get(f"{stack.nginx}/queue/status")).status_code == 200
        assert (await outsider.get(f"{stack.nginx}/queue/request/{'0' * 32}")).status_code == 404
    async with client_from("127.0.0.1") as insider:
        assert (await insider.get(f"{stack.nginx}/queue/history")).status_code == 200


async def test_guestqueue_refuses_the_operator_views_to_a_forwarded_outsider(stack: Stack) -> None:
    # Should nginx's allow list be widened by mistake, guestqueue (no admin key) still answers only
    # local callers: X-Forwarded-For from its trusted proxy names the real address.
    async with client_from("127.0.0.1") as proxy_like:
        for path in ("/queue/history", "/metrics"):
            outsider = await proxy_like.get(f"{stack.direct}{path}", headers={"X-Forwarded-For": "203.0.113.7"})
            assert outsider.status_code == 403 and outsider.json()["code"] == "forbidden", path
            local = await proxy_like.get(f"{stack.direct}{path}", headers={"X-Forwarded-For": "127.0.0.1"})
            assert local.status_code == 200, path


async def test_named_lines_and_the_admin_api_through_nginx(upstream: MockUpstream, tmp_path: Path) -> None:
    config = tmp_path / "guestqueue.toml"
    config.write_text(f'[lines.guest]\n[lines.side]\nupstream_url = "{upstream.url(chunks=2)}"\n')
    with (
        guestqueue_process(
            tmp_path,
            upstream_url=upstream.url(),
            trusted_proxies="127.0.0.1",
            config=str(config),
            admin_api_key="the-super-admin-key-0123456789",
        ) as direct,
        run_nginx(tmp_path, direct, read_timeout=None) as proxied,
    ):
        api = proxied.removesuffix("/guest")
        async with httpx.AsyncClient(timeout=20) as client:
            listed = (await client.get(f"{api}/lines")).json()["lines"]
            assert [line["name"] for line in listed] == ["guest", "side"]
            timeline = await timed_stream(client, f"{api}/lines/side/chat", json={"query": "via nginx"})
            assert timeline.names[-1] == "workflow_complete" and timeline.names.count("answer_chunk") == 2
            me = await client.get(f"{api}/admin/auth/me", headers={"X-API-Key": "the-super-admin-key-0123456789"})
            assert me.json()["role"] == "super_admin"
        async with websockets.connect(api.replace("http://", "ws://") + "/lines/side/ws") as ws:
            await ws.send(json.dumps({"query": "a websocket on a named line"}))
            messages = [json.loads(m) async for m in ws]
        assert messages[-1]["type"] == "result"


async def test_a_pull_worker_streams_its_answer_through_nginx(tmp_path: Path) -> None:
    """The NDJSON body reaches guestqueue as it is sent: the guest hears the first chunk while the
    worker's request is still open (nginx buffering it would hang this test)."""
    config = tmp_path / "guestqueue.toml"
    config.write_text('[lines.gpu]\nupstream_kind = "pull"\nupstream_interval_sec = 0\n')
    key = {"X-API-Key": "the-super-admin-key-0123456789"}
    with (
        guestqueue_process(
            tmp_path, trusted_proxies="127.0.0.1", config=str(config), admin_api_key=key["X-API-Key"]
        ) as direct,
        run_nginx(tmp_path, direct, read_timeout=None) as proxied,
    ):
        api = proxied.removesuffix("/guest")
        first_chunk = asyncio.Event()

        async def guest(client: httpx.AsyncClient) -> list[str]:
            chunks = []
            async with aconnect_sse(client, "POST", f"{api}/lines/gpu/chat", json={"query": "q"}) as source:
                async for sse in source.aiter_sse():
                    if sse.event == "answer_chunk":
                        chunks.append(json.loads(sse.data)["data"])
                        first_chunk.set()
            return chunks

        async def body() -> AsyncIterator[bytes]:
            yield b'"streamed "\n'
            await asyncio.wait_for(first_chunk.wait(), 10)
            yield b'"through nginx"\n'

        async with httpx.AsyncClient(timeout=30) as client:
            asked = asyncio.create_task(guest(client))
            jobs = (await client.post(f"{api}/lines/gpu/jobs/receive", json={"wait_sec": 10}, headers=key)).json()
            receipt = jobs["jobs"][0]["receipt"]
            sent = await client.post(
                f"{api}/jobs/{receipt}/chunks", content=body(), headers={**key, "Content-Type": "application/x-ndjson"}
            )
            assert sent.json()["chunks"] == 2
            assert (await client.post(f"{api}/jobs/{receipt}/complete", headers=key)).status_code == 200
            assert await asked == ["streamed ", "through nginx"]


async def test_the_openai_front_door_through_nginx(upstream: MockUpstream, tmp_path: Path) -> None:
    with (
        guestqueue_process(
            tmp_path, upstream_url=upstream.url(chunks=3, delay=0.05), trusted_proxies="127.0.0.1"
        ) as direct,
        run_nginx(tmp_path, direct, read_timeout=None) as proxied,
    ):
        v1 = proxied.removesuffix("/api/v1/guest") + "/v1"
        async with httpx.AsyncClient(timeout=20) as client:
            lines = []
            async with client.stream(
                "POST",
                f"{v1}/chat/completions",
                json={"model": "guest", "messages": [{"role": "user", "content": "via nginx"}], "stream": True},
            ) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
            models = (await client.get(f"{v1}/models")).json()
    deltas = [json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in lines[:-1]]
    assert "".join(deltas) == "chunk0 chunk1 chunk2 " and lines[-1] == "data: [DONE]"
    assert [m["id"] for m in models["data"]] == ["guest"]
