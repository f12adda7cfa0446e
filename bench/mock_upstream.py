"""A fast streaming mock upstream, as its own process: ``python -m bench.mock_upstream PORT [starlette|raw]``.

POST ``/chat`` answers SSE, ``data: {"answer_chunk": "..."}`` per chunk, the
shape guestqueue's ``http`` adapter, the relay and the Gradio app all read.
Query parameters: ``chunks`` (default 20), ``delay`` (seconds between chunks),
``first`` (seconds before the first chunk), ``record=1`` (keep start and end
times for ``GET /calls``). A query text holding ``dur=SECONDS`` waits that long
before answering, so one load can mix durations.

Two builds of the same behaviour: ``starlette`` (the default; a Starlette
``StreamingResponse``, what a small Python upstream usually is, and the kind of
"direct" the issue's reference numbers were taken against) and ``raw`` (a bare
ASGI callable, about twice as fast, to show how far "direct" moves with the
upstream's own cost).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

Scope = dict[str, Any]
Message = dict[str, Any]
DUR = re.compile(r"dur=([0-9.]+)")
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Mock:
    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []  # (start, end), time.monotonic() (system-wide on Linux)
        self._chunks: dict[int, list[bytes]] = {}

    def chunks(self, count: int) -> list[bytes]:
        if count not in self._chunks:
            self._chunks[count] = [
                f"data: {json.dumps({'answer_chunk': f'tok{i} '})}\n\n".encode() for i in range(count)
            ]
        return self._chunks[count]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            body = b"ok"
            if scope["path"] == "/calls":
                body, self.calls = json.dumps(self.calls).encode(), []
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": body})
            return
        raw = b""
        while True:
            message: Message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        start = time.monotonic()
        params = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        wait_s = float(params.get("first", "0"))
        match = DUR.search(raw.decode(errors="replace"))
        if match:
            wait_s = float(match.group(1))
        delay = float(params.get("delay", "0"))
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        if wait_s:
            await asyncio.sleep(wait_s)
        for i, chunk in enumerate(self.chunks(int(params.get("chunks", "20")))):
            if i and delay:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if params.get("record") == "1":
            self.calls.append((start, time.monotonic()))


def starlette_app() -> Starlette:
    mock = Mock()

    async def chat(request: Request) -> Response:
        raw = await request.body()
        start = time.monotonic()
        params = request.query_params
        match = DUR.search(raw.decode(errors="replace"))
        wait_s = float(match.group(1)) if match else float(params.get("first", "0"))
        delay = float(params.get("delay", "0"))
        chunks = mock.chunks(int(params.get("chunks", "20")))

        async def body() -> Any:
            if wait_s:
                await asyncio.sleep(wait_s)
            for i, chunk in enumerate(chunks):
                if i and delay:
                    await asyncio.sleep(delay)
                yield chunk
            if params.get("record") == "1":
                mock.calls.append((start, time.monotonic()))

        return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def calls(request: Request) -> Response:
        body, mock.calls = json.dumps(mock.calls), []
        return PlainTextResponse(body)

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/chat", chat, methods=["POST"]), Route("/calls", calls), Route("/", ok)])


def main() -> None:
    app: Any = starlette_app() if (sys.argv[2:] or ["starlette"])[0] == "starlette" else Mock()
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False, lifespan="off", backlog=4096
    )


if __name__ == "__main__":
    main()
