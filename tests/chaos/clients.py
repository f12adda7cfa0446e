"""Guests for the chaos scenarios: ones that read to the end, ones that hang up at a chosen
moment (and maybe come back), and raw sockets that misbehave below HTTP."""

from __future__ import annotations

import asyncio
import codecs
import socket
import struct
import time
from typing import Any

import httpx

from .oracle import SSE, Guest, SSEParser


async def read_stream(response: httpx.Response, guest: Guest, leave_in: str | None = None) -> None:
    """Feed the body to a strict SSE parser; hang up at the first ``leave_in`` event."""
    parser = SSEParser()
    decoder = codecs.getincrementaldecoder("utf-8")()
    async for raw in response.aiter_raw():
        for event in parser.feed(decoder.decode(raw)):
            if guest.terminal is not None:
                guest.problems.append(f"event {event.name} after the terminal event")
            if event.name == "queued" and guest.events and guest.events[-1].name == "queued":
                # Places in line only matter as they come; keeping just the newest keeps a long
                # run's client small, so the memory measured is the server's.
                guest.events[-1] = event
                continue
            guest.events.append(event)
            if guest.request_id is None and isinstance(event.data, dict):
                guest.request_id = event.data.get("request_id")
            if leave_in is not None and event.name == leave_in and guest.terminal is None:
                guest.left = leave_in
                return
    parser.feed(decoder.decode(b"", final=True))
    guest.problems.extend(parser.problems)
    guest.meta["pings"] = guest.meta.get("pings", 0) + parser.comments


async def visit(
    client: httpx.AsyncClient,
    base: str,
    body: dict[str, Any],
    *,
    label: str = "",
    leave_in: str | None = None,
    reconnect_after_s: float | None = None,
    headers: dict[str, str] | None = None,
) -> Guest:
    """POST /chat and read the stream; hang up in phase ``leave_in`` (an event name), and come
    back ``reconnect_after_s`` later with ``Last-Event-ID`` if asked to."""
    guest = Guest(label=label)
    started = time.monotonic()
    try:
        async with client.stream("POST", f"{base}/chat", json=body, headers=headers or {}) as response:
            guest.status_code = response.status_code
            if response.status_code != 200:
                await response.aread()
                guest.meta["body"] = response.text[:200]
                return guest
            guest.request_id = response.headers.get("x-request-id")
            await read_stream(response, guest, leave_in)
        if guest.left is not None and reconnect_after_s is not None and guest.request_id is not None:
            await asyncio.sleep(reconnect_after_s)
            guest.reconnected = True
            last_id = guest.events[-1].id if guest.events else "0"
            url = f"{base}/chat/{guest.request_id}/events"
            async with client.stream("GET", url, headers={"Last-Event-ID": last_id}) as response:
                if response.status_code != 200:
                    guest.problems.append(f"reconnect answered {response.status_code}")
                    return guest
                guest.left = None
                await read_stream(response, guest)
    except httpx.HTTPError as exc:
        guest.failure = f"{type(exc).__name__}: {exc}"
    finally:
        guest.meta["seconds"] = time.monotonic() - started
    return guest


def terminal_code(guest: Guest) -> tuple[str, str | None] | None:
    end: SSE | None = guest.terminal
    if end is None:
        return None
    code = end.data.get("code") if isinstance(end.data, dict) else None
    return end.name, code


def raw_request(
    path: str,
    body: bytes,
    *,
    host: str = "127.0.0.1",
    content_type: str = "application/json",
    extra_headers: str = "",
    chunked: bool = False,
) -> tuple[bytes, bytes]:
    """The head and body of an HTTP/1.1 POST, written by hand."""
    length = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {len(body)}\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{length}{extra_headers}\r\n"
    ).encode()
    if chunked:
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    return head, body


async def open_socket(port: int, *, rcvbuf: int | None = None, reset_on_close: bool = False) -> socket.socket:
    """A non-blocking client socket (the server may run in this same event loop)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf is not None:  # before connect, so the advertised window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if reset_on_close:  # close() sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock
