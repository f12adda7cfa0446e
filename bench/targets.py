"""Each server's own protocol, seen by the driver as one stream of normalised events.

Every target yields ``(name, data)`` with name one of ``queued`` (data:
``position``, 1 = next, and ``estimate_s``, the server's wait estimate),
``processing``, ``answer_chunk`` and finally ``done``. guestqueue, the relay
and the direct upstream are plain POST-then-SSE; Gradio is its queue
protocol: ``POST /gradio_api/queue/join`` then ``GET /gradio_api/queue/data``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

Event = tuple[str, dict[str, Any]]
NO_DATA: dict[str, Any] = {}


async def sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[bytes, bytes]]:
    """(event name, data) per SSE block; comments (pings) are skipped."""
    name, data = b"message", b""
    async for raw in resp.content:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield name, data
            name, data = b"message", b""
        elif line.startswith(b"data:"):
            data = line[5:].lstrip()
        elif line.startswith(b"event:"):
            name = line[6:].strip()


class Target:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    def events(self, query: str) -> AsyncIterator[Event]:
        raise NotImplementedError


class Direct(Target):
    """The mock upstream itself: every data line is an answer chunk."""

    async def events(self, query: str) -> AsyncIterator[Event]:
        async with self.session.post(self.url, json={"query": query}) as resp:
            resp.raise_for_status()
            async for _, _ in sse(resp):
                yield "answer_chunk", NO_DATA
        yield "done", NO_DATA


class Relay(Target):
    async def events(self, query: str) -> AsyncIterator[Event]:
        async with self.session.post(self.url + "/chat", json={"query": query}) as resp:
            resp.raise_for_status()
            async for name, _ in sse(resp):
                yield ("done" if name == b"done" else "answer_chunk"), NO_DATA


class GuestQueue(Target):
    async def events(self, query: str) -> AsyncIterator[Event]:
        async with self.session.post(self.url + "/api/v1/guest/chat", json={"query": query}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            async for name, data in sse(resp):
                if name == b"queued":
                    payload = json.loads(data)["data"]
                    yield (
                        "queued",
                        {
                            "position": payload["queue_position"],
                            "estimate_s": payload["estimated_wait_sec"],
                            "range_s": payload.get("estimated_wait_range_sec"),
                        },
                    )
                elif name == b"answer_chunk":
                    yield "answer_chunk", NO_DATA
                elif name == b"processing":
                    yield "processing", NO_DATA
                elif name == b"workflow_complete":
                    yield "done", NO_DATA
                    return
                elif name in (b"error", b"timeout"):
                    raise RuntimeError(f"guestqueue {name.decode()}: {data[:200].decode()}")


class OpenAIFront(Target):
    """guestqueue's OpenAI front door: ``chat.completion.chunk`` data lines, then ``[DONE]``."""

    async def events(self, query: str) -> AsyncIterator[Event]:
        body = {"model": "guest", "messages": [{"role": "user", "content": query}], "stream": True}
        async with self.session.post(self.url + "/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            async for _, data in sse(resp):
                if data == b"[DONE]":
                    yield "done", NO_DATA
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"guestqueue /v1 error: {data[:200].decode()}")
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    yield "answer_chunk", NO_DATA


class Gradio(Target):
    fn_index = -1

    async def setup(self) -> None:
        async with self.session.get(self.url + "/config") as resp:
            config = await resp.json()
        self.prefix = self.url + config.get("api_prefix", "/gradio_api")
        names = [dep.get("api_name") for dep in config["dependencies"]]
        self.fn_index = names.index("chat")

    async def events(self, query: str) -> AsyncIterator[Event]:
        session_hash = uuid.uuid4().hex[:11]
        body = {"data": [query], "fn_index": self.fn_index, "session_hash": session_hash}
        async with self.session.post(self.prefix + "/queue/join", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async with self.session.get(self.prefix + "/queue/data", params={"session_hash": session_hash}) as resp:
            resp.raise_for_status()
            async for _, data in sse(resp):
                message = json.loads(data)
                msg = message["msg"]
                if msg == "estimation":
                    # rank is 0-based; rank_eta is Gradio's estimate until the *result* (start + processing).
                    yield "queued", {"position": message["rank"] + 1, "estimate_s": message.get("rank_eta")}
                elif msg == "process_generating":
                    yield "answer_chunk", NO_DATA
                elif msg == "process_starts":
                    yield "processing", NO_DATA
                elif msg == "process_completed":
                    if not message.get("success", True):
                        raise RuntimeError(f"gradio error: {str(message)[:200]}")
                    yield "done", NO_DATA
                    return
                elif msg in ("close_stream", "unexpected_error"):
                    raise RuntimeError(f"gradio {msg}: {str(message)[:200]}")


KINDS: dict[str, type[Target]] = {
    "direct": Direct,
    "relay": Relay,
    "guestqueue": GuestQueue,
    "guestqueue-openai": OpenAIFront,
    "gradio": Gradio,
}


async def target_from_job(session: aiohttp.ClientSession, job: dict[str, Any]) -> Target:
    target = KINDS[job["kind"]](session, job["url"])
    if isinstance(target, Gradio):
        await target.setup()
    return target
