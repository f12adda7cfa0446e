"""Hostile clients straight to uvicorn (no nginx in front), over raw sockets: guestqueue.web.server."""

from __future__ import annotations

import asyncio
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from guestqueue import Settings
from guestqueue.web.server import uvicorn_config

from .conftest import MockUpstream, env_without_guest_vars, free_port, serve, stream_events, wait_for_http


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(base)
    assert url.hostname is not None and url.port is not None
    return await asyncio.open_connection(url.hostname, url.port)


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not in time)."""
    async with asyncio.timeout(timeout_s):
        return await reader.read(-1)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def refused(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> int | str:
    """Send ``head``; the status the server answers before closing, or "reset" when it closed while
    the rest was still coming (its 400 may then be lost)."""
    try:
        writer.write(head)
        await writer.drain()
        response = await closed_within(reader, 5)
    except ConnectionResetError:
        return "reset"
    finally:
        writer.close()
    return status_of(response)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    return head + await reader.readexactly(length)


async def test_a_one_megabyte_header_is_refused_and_the_connection_closed() -> None:
    async with serve() as running:
        head = b"GET /api/v1/guest/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
        assert await refused(*await connect(running.base), head) in (400, "reset")
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{running.base}/health")).status_code == 200


async def test_twenty_thousand_headers_are_refused() -> None:
    # h11's limit is on the whole head, so it bounds the number of headers too.
    async with serve() as running:
        head = b"GET /api/v1/guest/health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n"
        assert await refused(*await connect(running.base), head) in (400, "reset")


async def test_a_head_over_the_limit_is_refused_even_when_it_arrives_in_one_read() -> None:
    # h11 checks its limit only while the head is incomplete: 12 000 headers (97 KB) sent in one
    # write against the 64 KiB default were parsed and answered 200.
    async with serve(max_header_bytes=16384) as running:
        head = b"GET /api/v1/guest/health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X%d:\r\n" % i for i in range(3000))
        assert 16384 < len(head) < 32768  # well within one read
        assert await refused(*await connect(running.base), head + b"\r\n") in (400, "reset")
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{running.base}/health")).status_code == 200


async def test_a_head_dribbled_byte_by_byte_is_closed_after_the_header_timeout() -> None:
    async with serve(header_timeout_s=0.5) as running:
        reader, writer = await connect(running.base)
        started = time.monotonic()
        with_eof = asyncio.ensure_future(closed_within(reader, 5))
        for byte in b"GET /api/v1/guest/health HTTP/1.1\r\nX-Slow: ":
            if with_eof.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        else:
            writer.write(b"a" * 10)
        assert await with_eof == b""
        assert time.monotonic() - started < 3
        writer.close()


async def test_a_connection_that_never_sends_is_closed_after_the_header_timeout() -> None:
    async with serve(header_timeout_s=0.3) as running:
        idle = [await connect(running.base) for _ in range(20)]
        for reader, _ in idle:
            assert await closed_within(reader, 3) == b""
        for _, writer in idle:
            writer.close()
        assert len(running.server.server_state.connections) == 0  # type: ignore[union-attr]


async def test_a_keep_alive_connection_dribbling_its_next_head_is_closed() -> None:
    async with serve(header_timeout_s=0.5) as running:
        reader, writer = await connect(running.base)
        writer.write(b"GET /api/v1/guest/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.8)  # idle keep-alive: its own (longer) timeout, nothing closes it yet
        writer.write(b"GET /api/v1/guest/health HTTP/1.1\r\nX-Slow: a")
        started = time.monotonic()
        assert await closed_within(reader, 5) == b""
        assert time.monotonic() - started < 3
        writer.close()


async def test_a_content_length_larger_than_the_body_gets_408_not_a_hang() -> None:
    async with serve(body_timeout_s=0.5) as running:
        reader, writer = await connect(running.base)
        writer.write(
            b"POST /api/v1/guest/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"query": "hi"}'
        )
        response = await closed_within(reader, 5)
        writer.close()
    assert status_of(response) == 408
    assert b'"code":"body_timeout"' in response


def test_settings_reach_uvicorn() -> None:
    settings = Settings(
        max_header_bytes=1234, max_connections=77, backlog=99, max_body_bytes=4321, ping_s=3.0, send_timeout_s=7.0
    )
    config = uvicorn_config(object(), settings)
    assert (config.h11_max_incomplete_event_size, config.backlog) == (1234, 99)
    assert config.limit_concurrency is not None and config.limit_concurrency >= 77
    assert (config.ws_max_size, config.ws_ping_interval, config.ws_ping_timeout) == (4321, 3.0, 7.0)
    assert config.proxy_headers is False


def _low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_health_stays_reachable_when_idle_sockets_outnumber_file_descriptors(tmp_path: Path) -> None:
    # Once: 1 100 idle sockets under `ulimit -n 1024` left accept() failing with EMFILE, /health unreachable.
    port = free_port()
    env = {**env_without_guest_vars(), "GUEST_PORT": str(port), "GUEST_DB_PATH": ""}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "guestqueue", "serve", "--log-level", "warning"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_low_file_limit,
    )
    idle: list[socket.socket] = []
    try:
        health = f"http://127.0.0.1:{port}/api/v1/guest/health"
        wait_for_http(health)
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.5)
        response = httpx.get(health, timeout=3)
        assert response.status_code == 200, response.text
    finally:
        for sock in idle:
            sock.close()
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


async def test_behind_a_trusted_proxy_httptools_serves_the_stream_and_leaves_the_head_limits_to_it(
    upstream: MockUpstream,
) -> None:
    settings: dict[str, Any] = {"http": "httptools", "trusted_proxies": "127.0.0.1", "max_header_bytes": 1024}
    async with serve(upstream_url=upstream.url(chunks=3), **settings) as running:
        async with httpx.AsyncClient(timeout=10) as client:
            events = await stream_events(client, f"{running.base}/chat", json={"query": "q"})
            # A head over GUEST_MAX_HEADER_BYTES: h11 refuses it (the tests above); httptools leaves
            # it to the proxy in front, which is why it needs one.
            health = await client.get(f"{running.base}/health", headers={"X-Big": "a" * 2048})
        assert [e.name for e in events][-4:] == ["answer_chunk"] * 3 + ["workflow_complete"]
        assert health.status_code == 200
        assert running.server is not None
        protocols = {type(c).__name__ for c in running.server.server_state.connections}
        assert protocols <= {"HttpToolsProtocol"} and not any("H11" in p for p in protocols), protocols
