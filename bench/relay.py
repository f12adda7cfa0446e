"""The bare relay: what a careful user writes by hand instead of a queue.

Starlette, one shared ``httpx.AsyncClient`` (default transport), an
``asyncio.Semaphore`` for the concurrency limit, and the upstream's SSE data
lines re-emitted to the guest through a plain ``StreamingResponse``. No line,
no positions, no ETA: guests past the limit simply wait on the semaphore.

    python -m bench.relay PORT UPSTREAM_URL CONCURRENCY [httpx|aiohttp]

``aiohttp`` keeps the httpx API but puts it on the ``httpx-aiohttp`` transport,
to measure what the transport alone is worth.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


def build(upstream_url: str, concurrency: int, transport: str = "httpx") -> Starlette:
    state: dict[str, httpx.AsyncClient] = {}
    slots = asyncio.Semaphore(concurrency)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
        timeout = httpx.Timeout(60.0, connect=10.0)
        if transport == "aiohttp":
            from httpx_aiohttp import AiohttpTransport

            client = httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=timeout)
        else:
            client = httpx.AsyncClient(limits=limits, timeout=timeout)
        async with client:
            state["client"] = client
            yield

    async def chat(request: Request) -> Response:
        body = await request.json()

        async def relay() -> AsyncIterator[bytes]:
            async with slots, state["client"].stream("POST", upstream_url, json={"query": body["query"]}) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        chunk = json.loads(line[6:])["answer_chunk"]
                        yield f"event: answer_chunk\ndata: {json.dumps(chunk)}\n\n".encode()
            yield b"event: done\ndata: {}\n\n"

        return StreamingResponse(relay(), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/chat", chat, methods=["POST"]), Route("/health", health)], lifespan=lifespan)


def main() -> None:
    port, url, concurrency = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    transport = sys.argv[4] if len(sys.argv) > 4 else "httpx"
    uvicorn.run(
        build(url, concurrency, transport),
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
