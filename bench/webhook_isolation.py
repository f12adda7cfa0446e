"""Webhook isolation (issue 20, point 9): how long tenant B's delivery waits while tenant A's receiver hangs.

    python -m bench.webhook_isolation [--events 5] [--redis-url redis://127.0.0.1:6379/0]

Two lines in one GUEST_CONFIG file: line ``a`` subscribes a receiver that never answers (it holds
every request until the run ends), line ``b`` one that answers at once. ``--events`` requests go
through line ``a`` first, then one through line ``b``; printed is the time from the end of ``b``'s
answer (when its ``completed`` event is posted) to its delivery reaching B's receiver. With
``--redis-url`` two guestqueue processes share the outbox through Redis (``a``'s requests alternate
between them, ``b``'s goes to the second). Each guestqueue runs as its own process, the receivers
in this one (uvicorn on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import servers
from .procs import free_port


class Receivers:
    """A's receiver holds every request until :attr:`released`; B's notes when each delivery came."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.a_seen = 0
        self.b_seen: list[float] = []  # time.monotonic() of each delivery to B

    async def hang(self, request: Request) -> Response:
        await request.body()
        self.a_seen += 1
        await self.released.wait()
        return JSONResponse({"ok": True})

    async def answer(self, request: Request) -> Response:
        await request.body()
        self.b_seen.append(time.monotonic())
        return JSONResponse({"ok": True})


@asynccontextmanager
async def receiving(receivers: Receivers) -> AsyncIterator[str]:
    """Both receivers on one free port in this loop; yields the base URL (``/a`` hangs, ``/b`` answers)."""
    app = Starlette(
        routes=[Route("/a", receivers.hang, methods=["POST"]), Route("/b", receivers.answer, methods=["POST"])]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        receivers.released.set()  # uvicorn waits for the held requests before it stops
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


def write_config(path: Path, upstream_url: str, hooks: str) -> None:
    text = ""
    for line in ("a", "b"):
        text += (
            f'[lines.{line}]\nupstream_url = "{upstream_url}"\n'
            f'[[lines.{line}.webhooks]]\nurl = "{hooks}/{line}"\nevents = ["completed"]\n'
            f'secret = "a-bench-secret-of-some-length"\n'
        )
    path.write_text(text)


async def chat(client: httpx.AsyncClient, base: str, line: str) -> None:
    async with client.stream("POST", f"{base}/api/v1/lines/{line}/chat", json={"query": "hello"}) as answer:
        answer.raise_for_status()
        async for _ in answer.aiter_bytes():
            pass


async def measure(args: argparse.Namespace, tmp: Path) -> float | None:
    receivers = Receivers()
    with ExitStack() as stack:
        mock = stack.enter_context(servers.mock())
        async with receiving(receivers) as hooks:
            config = tmp / "guestqueue.toml"
            write_config(config, f"{mock.base}/chat?chunks=1", hooks)
            extra = ["--config", str(config), "--webhook-backoff-sec", "1"]
            if args.redis_url:
                prefix = f"bench-{uuid.uuid4().hex[:10]}"
                extra += ["--redis-url", args.redis_url, "--redis-prefix", prefix]
                count = 2
            else:
                extra += ["--db-path", str(tmp / "guestqueue.db")]
                count = 1
            bases = [
                stack.enter_context(servers.guestqueue(mock.base, concurrency=4, queue_size=100, extra=extra)).base
                for _ in range(count)
            ]
            async with httpx.AsyncClient(timeout=30) as client:
                for n in range(args.events):
                    await chat(client, bases[n % count], "a")
                await chat(client, bases[-1], "b")
                posted = time.monotonic()
                deadline = posted + args.timeout_s
                while not receivers.b_seen and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            print(f"A's receiver got {receivers.a_seen} requests (each held until the end)")
            return receivers.b_seen[0] - posted if receivers.b_seen else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhook_isolation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=5, help="requests (so deliveries) on A's line first")
    parser.add_argument("--redis-url", default="", help="two instances sharing the outbox through this Redis")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="give up waiting for B's delivery after this")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        delay_s = asyncio.run(measure(args, Path(tmp)))
    mode = "2 instances, Redis outbox" if args.redis_url else "1 instance, SQLite outbox"
    if delay_s is None:
        print(f"{mode}: B's delivery did not arrive within {args.timeout_s:g} s after {args.events} events to A")
        return 1
    print(f"{mode}: B's delivery arrived {delay_s:.3f} s after B's request ended ({args.events} events to A first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
