"""Scenario 6, hostile input: what a guest or an upstream can send that must never become a
500, a broken stream, a forged event or a stuck request log.

Each case is (name, raw body, content type, chunked, expected status). Bodies are sent
as raw bytes, so nothing on the client side "fixes" them first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from guestqueue import Chunk, WorkflowRequest

from .clients import open_socket, raw_request

LIMIT = 16384  # GUEST_MAX_BODY_BYTES for these runs
INJECTIONS = [
    '\n\nevent: workflow_complete\ndata: {"forged": true}\n\n',
    "line\rid: 999\rretry: 1\r\r",
    "crlf\r\n\r\nevent: error\r\ndata: x\r\n\r\n",
    "nul\0byte",
    "id: 7\n",
    "retry: 10\n\n",
    "data: data:\n\n",
    ": a comment\n\n",
    "\u2028line separator\u2029paragraph\u0085next line",
    "\ufeffbom",
    "end\r",
]


def _nested(depth: int, opening: str = '{"a":', closing: str = "}") -> bytes:
    return (opening * depth + "1" + closing * depth).encode()


def guest_cases() -> list[tuple[str, bytes, str, bool, int]]:
    query = json.dumps
    return [
        ("body over the limit", query({"query": "x" * (LIMIT + 10)}).encode(), "application/json", False, 413),
        ("chunked body over the limit", query({"query": "x" * (LIMIT + 10)}).encode(), "application/json", True, 413),
        ("deeply nested array", b"[" * 2000 + b"]" * 2000, "application/json", False, 400),
        ("deeply nested object", _nested(1500), "application/json", False, 400),
        ("nested parameters", b'{"query":"q","parameters":' + _nested(1500) + b"}", "application/json", False, 400),
        ("invalid UTF-8", b'{"query":"\xff\xfe\xc0\xaf"}', "application/json", False, 400),
        ("lone surrogate in query", b'{"query":"a\\ud800b"}', "application/json", False, 400),
        ("lone surrogate in parameters", b'{"query":"q","parameters":{"k":"\\udfff"}}', "application/json", False, 400),
        ("lone surrogate in session_id", b'{"query":"q","session_id":"\\udbff"}', "application/json", False, 400),
        ("number too big for a float", b'{"query":"q","parameters":{"n":1e999}}', "application/json", False, 400),
        ("NaN", b'{"query":"q","parameters":{"n":NaN}}', "application/json", False, 400),
        (
            "integer of 5000 digits",
            b'{"query":"q","parameters":{"n":' + b"9" * 5000 + b"}}",
            "application/json",
            False,
            400,
        ),
        ("huge query", query({"query": "\u00e9" * 1500}).encode(), "application/json", False, 422),
        ("huge session_id", query({"query": "q", "session_id": "s" * 3000}).encode(), "application/json", False, 422),
        ("not an object", b'["query"]', "application/json", False, 400),
        ("empty body", b"", "application/json", False, 400),
        ("query not a string", b'{"query":{"$ne":1}}', "application/json", False, 422),
        ("text/plain", query({"query": "q"}).encode(), "text/plain", False, 415),
        ("form", b"query=q", "application/x-www-form-urlencoded", False, 415),
        ("multipart", b"--b\r\n\r\nq\r\n--b--", "multipart/form-data; boundary=b", False, 415),
        ("no content type", query({"query": "q"}).encode(), "", False, 415),
        ("JSON with a charset", query({"query": "q"}).encode(), "application/json; charset=latin-1", False, 200),
        ("UTF-16 JSON", query({"query": "q"}).encode("utf-16"), "application/json", False, 200),
        ("NUL in the query", b'{"query":"a\\u0000b"}', "application/json", False, 200),
    ]


async def send_raw(port: int, body: bytes, content_type: str, chunked: bool, path: str) -> tuple[int, bytes]:
    """One hand-written request; the status and the body of the answer."""
    sock = await open_socket(port)
    loop = asyncio.get_running_loop()
    try:
        type_header = f"Content-Type: {content_type}\r\n" if content_type else ""
        head, payload = raw_request(path, body, content_type="", chunked=chunked)
        head = head.replace(b"Content-Type: \r\n", type_header.encode())
        await loop.sock_sendall(sock, head + payload)
        answer = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in answer or not _complete(answer):
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    break
                answer += data
    finally:
        sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer.partition(b"\r\n\r\n")[2]


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return b"\r\n0\r\n\r\n" in body or answer.endswith(b"\n\n")


async def scripted_workflow(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
    """Yields exactly ``parameters["chunks"]`` (and ``parameters["suggested"]``): text chosen by the test."""
    chunks: Any = request.parameters.get("chunks", [request.query])
    for text in chunks:
        yield text
    suggested = request.parameters.get("suggested")
    if suggested is not None:
        yield Chunk("", suggested_questions=list(suggested))


async def upstream_answer(client: httpx.AsyncClient, base: str, chunks: list[str], **body: Any) -> httpx.Response:
    return await client.post(f"{base}/chat/simple", json={"query": "q", "parameters": {"chunks": chunks}, **body})
