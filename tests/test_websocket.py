"""``WS /api/v1/guest/ws`` over a real uvicorn server, with the websockets client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from guestqueue import WorkflowRequest

from .conftest import assert_drained, serve, wait_until
from .support.ws import messages, ws_url


class Gate:
    """A Python workflow that holds every question starting with "hold" until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[WorkflowRequest] = []

    async def __call__(self, request: WorkflowRequest) -> AsyncIterator[str]:
        self.seen.append(request)
        if request.query.startswith("hold"):
            await self.release.wait()
        for word in ("one ", "two ", "three"):
            yield word


async def test_lifecycle_in_order_while_waiting_behind_another_guest() -> None:
    gate = Gate()
    async with serve(gate, max_concurrent_requests=1) as running:
        async with websockets.connect(ws_url(running.base)) as first:
            await first.send(json.dumps({"query": "hold the line"}))
            await wait_until(lambda: len(running.service.running) == 1, message="first guest processing")
            async with websockets.connect(ws_url(running.base)) as second:
                await second.send(json.dumps({"query": "my turn?", "session_id": "s1"}))
                waiting = json.loads(await second.recv())
                gate.release.set()
                rest = await messages(second)
                close_code = second.close_code
            await messages(first)
        await wait_until(lambda: len(running.service.registry) == 0, message="tickets ended")
        assert_drained(running)
    assert waiting["type"] == "queue_position"
    assert waiting["position"] == 1 and waiting["total_ahead"] == 0
    assert waiting["estimated_wait_sec"] >= 0 and len(waiting["request_id"]) == 32
    types = [m["type"] for m in rest]
    # Any further position updates come first, then processing, the chunks, the result.
    body = [t for t in types if t != "queue_position"]
    assert body == ["processing", "answer_chunk", "answer_chunk", "answer_chunk", "result"], types
    assert types.index("processing") > max((i for i, t in enumerate(types) if t == "queue_position"), default=-1)
    assert "".join(m["data"] for m in rest if m["type"] == "answer_chunk") == "one two three"
    result = rest[-1]
    assert result["request_id"] == waiting["request_id"]
    assert result["data"]["answer"] == "one two three" and result["data"]["cached"] is False
    assert close_code == 1000
    assert gate.seen[1].session_id == "s1"


async def test_the_older_parameters_form_is_accepted() -> None:
    gate = Gate()
    async with serve(gate) as running, websockets.connect(ws_url(running.base)) as ws:
        await ws.send(json.dumps({"parameters": {"query": "old client", "lang": "de"}}))
        received = await messages(ws)
    assert received[-1]["type"] == "result"
    assert gate.seen[0].query == "old client"
    assert dict(gate.seen[0].parameters) == {"lang": "de"}


async def test_queue_full_is_a_message_and_shares_the_line_with_sse_guests() -> None:
    gate = Gate()
    async with serve(gate, max_concurrent_requests=1, max_queue_size=1) as running:
        async with httpx.AsyncClient(timeout=10) as client:
            # One SSE guest being answered, one waiting: the line (size 1) is full.
            def hold(query: str) -> asyncio.Task[httpx.Response]:
                return asyncio.create_task(client.post(f"{running.base}/chat/simple", json={"query": query}))

            holders = [hold("hold 1")]
            await wait_until(lambda: len(running.service.running) == 1, message="first SSE guest processing")
            holders.append(hold("hold 2"))
            await wait_until(lambda: len(running.service.waiting) == 1, message="second SSE guest waiting")
            async with websockets.connect(ws_url(running.base)) as ws:
                await ws.send(json.dumps({"query": "room for me?"}))
                received = await messages(ws)
                close = ws.close_code, ws.close_reason
            assert running.service.stats.rejected_requests == 1
            gate.release.set()
            assert [r.status_code for r in await asyncio.gather(*holders)] == [200, 200]
    assert len(received) == 1 and received[0]["type"] == "queue_full"
    assert received[0]["message"] and received[0]["retry_after"] >= 1
    assert close == (1013, "queue_full")


async def test_per_client_limit_counts_websocket_and_sse_guests_together() -> None:
    gate = Gate()
    async with serve(gate, max_per_client=1) as running, httpx.AsyncClient(timeout=10) as client:
        holder = asyncio.create_task(client.post(f"{running.base}/chat/simple", json={"query": "hold me"}))
        await wait_until(lambda: running.service.stats.total_requests == 1, message="SSE guest admitted")
        async with websockets.connect(ws_url(running.base)) as ws:
            await ws.send(json.dumps({"query": "and me"}))
            received = await messages(ws)
            close_code = ws.close_code
        gate.release.set()
        await holder
    assert [(m["type"], m["code"]) for m in received] == [("error", "client_limit")]
    assert close_code == 1013


@pytest.mark.parametrize(
    ("sent", "code", "close_code"),
    [
        ("{nope", "invalid_json", 1007),
        ("[1, 2]", "invalid_json", 1007),
        ('{"query": NaN}', "invalid_json", 1007),
        (b'{"query": "bytes"}', "invalid_json", 1007),
        ('{"query": ""}', "invalid_field", 1008),
        ('{"query": "x", "parameters": []}', "invalid_field", 1008),
        ("[" * 60_000, "invalid_json", 1007),  # once a RecursionError: the socket dropped without a close frame
        ('{"query": ' + '{"a": ' * 8_000 + "1" + "}" * 8_001, "invalid_json", 1007),
    ],
)
async def test_invalid_messages_get_a_clear_error_and_close(sent: str | bytes, code: str, close_code: int) -> None:
    async with serve() as running:
        async with websockets.connect(ws_url(running.base), max_size=None) as ws:
            await ws.send(sent)
            received = await messages(ws)
            assert (ws.close_code, ws.close_reason) == (close_code, code)
        assert len(received) == 1 and received[0]["type"] == "error" and received[0]["code"] == code
        assert received[0]["message"]
        # The server is unharmed, and nothing was admitted.
        assert running.service.stats.total_requests == 0
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{running.base}/health")).status_code == 200


async def test_a_message_over_the_body_limit_is_refused_by_the_protocol_before_it_is_buffered() -> None:
    # uvicorn's default (16 MiB per message) let 60 guests x 15 MB take the server to 913 MB.
    async with serve(max_body_bytes=1000) as running:
        async with websockets.connect(ws_url(running.base), max_size=None) as ws:
            await ws.send('{"query": "' + "x" * 5_000_000 + '"}')
            received = await messages(ws)
            assert ws.close_code == 1009
        assert received == []
        assert running.service.stats.total_requests == 0
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{running.base}/health")).status_code == 200


async def test_a_guest_who_disconnects_while_waiting_leaves_after_the_grace() -> None:
    gate = Gate()
    async with serve(gate, max_concurrent_requests=1, reconnect_grace_s=0.3) as running:
        async with websockets.connect(ws_url(running.base)) as first:
            await first.send(json.dumps({"query": "hold on"}))
            await wait_until(lambda: len(running.service.running) == 1, message="first guest processing")
            async with websockets.connect(ws_url(running.base)) as second:
                await second.send(json.dumps({"query": "I will not wait"}))
                assert json.loads(await second.recv())["type"] == "queue_position"
                request_id = next(iter(running.service.waiting.values())).tickets[0].id
            ticket = running.service.registry.get(request_id)
            await wait_until(lambda: ticket.done, timeout_s=5, message="abandoned ticket ended")
            assert ticket.error_code == "disconnected"
            gate.release.set()
            await messages(first)
        await wait_until(lambda: len(running.service.registry) == 0, message="tickets ended")
        assert_drained(running)
    assert [r.query for r in gate.seen] == ["hold on"], "the guest who left never reached the upstream"


async def test_cancel_message_leaves_the_line() -> None:
    gate = Gate()
    async with serve(gate, max_concurrent_requests=1) as running:
        async with websockets.connect(ws_url(running.base)) as first:
            await first.send(json.dumps({"query": "hold it"}))
            await wait_until(lambda: len(running.service.running) == 1, message="first guest processing")
            async with websockets.connect(ws_url(running.base)) as second:
                await second.send(json.dumps({"query": "never mind"}))
                assert json.loads(await second.recv())["type"] == "queue_position"
                await second.send(json.dumps({"type": "cancel"}))
                rest = await messages(second)
            gate.release.set()
            await messages(first)
        assert running.service.stats.as_dict()["cancelled_requests"] == 1
    assert rest[-1]["type"] == "error" and rest[-1]["code"] == "cancelled"


async def raw_websocket(
    base: str, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand over a plain socket (to stop reading, or to see control frames)."""
    url = urlsplit(ws_url(base))
    assert url.hostname is not None and url.port is not None
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    return reader, writer


def text_frame(text: str) -> bytes:
    """One masked (as a client must) text frame."""
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81]) + (
        bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def test_a_guest_who_stops_reading_is_let_go_after_the_send_timeout() -> None:
    # Once: a send to a guest that stopped reading waited forever, pinning its task and its place.
    asked: list[str] = []

    async def long_answer(request: WorkflowRequest) -> AsyncIterator[str]:
        asked.append(request.request_id)
        for _ in range(5000):
            yield "x" * 1000

    async with serve(long_answer, send_timeout_s=0.5, ping_s=0, reconnect_grace_s=0.0) as running:
        _, writer = await raw_websocket(running.base, receive_buffer=4096)
        writer.write(text_frame(json.dumps({"query": "a long one"})))
        await wait_until(lambda: bool(asked), message="asked upstream")
        ticket = running.service.registry.get(asked[0])
        assert ticket is not None
        await wait_until(lambda: ticket.subscribers == 0, timeout_s=8, message="the guest let go")
        assert ticket.drop_reason == "send_timeout" or ticket.done
        writer.close()


async def test_protocol_pings_every_ping_interval() -> None:
    async with serve(ping_s=0.3) as running:
        reader, writer = await raw_websocket(running.base)
        async with asyncio.timeout(3):
            opcode, _ = await read_frame(reader)
        assert opcode == 0x9  # ping (uvicorn's default was every 20 s)
        writer.close()


async def test_a_websocket_from_another_origin_is_refused_when_origins_are_set() -> None:
    async with serve(cors_origins="http://good.example") as running:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(running.base), origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        own = running.base.split("/api/")[0]  # guestqueue's own pages: the same origin, listed or not
        for origin in ("http://good.example", None, own):  # a listed page, a client that is not a browser
            async with websockets.connect(ws_url(running.base), origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"query": "hello"}))
                assert (await messages(ws))[-1]["type"] == "result"


async def test_a_websocket_from_another_origin_is_refused_with_no_origins_set_too() -> None:
    """Issue 20 (a web page in the operator's browser): CORS does not cover WebSockets, so with no
    GUEST_CORS_ORIGINS any page could open one to a local server, as its operator, on any line."""
    async with serve() as running:
        for origin in ("http://evil.example", "null"):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(ws_url(running.base), origin=origin):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 403
        own = running.base.split("/api/")[0]
        for allowed in (own, None):  # guestqueue's own pages; a client that is not a browser
            async with websockets.connect(ws_url(running.base), origin=allowed) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"query": "hello"}))
                assert (await messages(ws))[-1]["type"] == "result"
