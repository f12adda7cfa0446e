"""Scenario 10, beyond proxying (issue 13): admission decisions/s, webhook delivery latency, pull jobs/s.

Each part runs guestqueue's real parts in this process, on the memory line and on a
Redis line (a redis-server started here):

- **admission decisions**: ``--guests`` guests join an admission line at once
  (``max_active`` and ``batch_size`` as large as the crowd, pacing 0.1 ms); a
  decision is one guest let in: the slot, the token (HS256), the session. Timed from
  the first join to the last ``admitted``.
- **joins**: ``--guests`` questions join a held line (``queue_all``: nothing starts) at once;
  joins per second, and the CPU each join cost this process and (on Redis) ``redis-server``.
- **webhook delivery**: ``--deliveries`` events, one at a time, to a receiver on
  loopback (uvicorn): from the event to the receiver's handler, p50 and p99. The
  outbox keeps each delivery first (SQLite, or Redis when shared).
- **pull jobs**: ``--jobs`` guests, 64 at a time, ask a pull line of a
  ``guestqueue serve`` process (64 slots) served by ``--workers`` ``PullWorker``
  clients in this process answering one chunk each: receive, the NDJSON chunks,
  complete. Jobs per second from the first ask to the last answer, and the
  guestqueue process's CPU per job (on two cores the guests and the Python
  workers, one process, are the bottleneck: the CPU per job says what one
  guestqueue core can carry).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from guestqueue.config import Settings
from guestqueue.linespec import Webhook, parse_line
from guestqueue.pull.worker import PullWorker
from guestqueue.runtime import open_queue
from guestqueue.tickets import Status
from guestqueue.upstream import WorkflowRequest, make_upstream
from guestqueue.webhooks import Outbox

from ..procs import PY, Server, cpu_seconds, free_port
from ..report import Result, Table
from .scaleout import Redis

SECRET = "bench-token-secret-of-32-characters-or-more"
ASKING = 64  # guests asking the pull line at once (and its slots: jobs out with workers at once)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guests", type=int, default=5000, help="guests joining the admission line at once")
    parser.add_argument("--deliveries", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4, help="pull workers (each takes up to 10 jobs a receive)")


def smoke(args: argparse.Namespace) -> None:
    args.guests, args.deliveries, args.jobs, args.workers = 50, 20, 20, 2


def run(args: argparse.Namespace) -> Result:
    redis = Redis()
    try:
        return asyncio.run(_run(args, redis.url, redis.proc.pid))
    finally:
        redis.stop()


async def _run(args: argparse.Namespace, redis_url: str, redis_pid: int) -> Result:
    result = Result("beyond", {k: getattr(args, k) for k in ("guests", "deliveries", "jobs", "workers")})
    admission = Table(
        "admission decisions (guests let in: slot, token, session)",
        ["line", "guests", "seconds", "decisions/s", "Redis CPU µs/decision"],
    )
    joins = Table(
        "joins (questions into a held line, all at once)",
        ["line", "guests", "joins/s", "guestqueue CPU ms/join", "Redis CPU µs/join"],
    )
    webhooks = Table("webhook delivery, event to receiver (ms)", ["outbox", "deliveries", "p50", "p90", "p99"])
    pulls = Table(
        "pull workers: jobs through HTTP, one chunk each",
        ["line", "jobs", "workers", "seconds", "jobs/s", "guestqueue CPU ms/job"],
    )
    for line, url in (("memory", ""), ("redis", redis_url)):
        redis_s = cpu_seconds(redis_pid)
        seconds = await _admissions(args.guests, url)
        redis_us = (cpu_seconds(redis_pid) - redis_s) / args.guests * 1e6 if url else 0.0
        admission.add(line, args.guests, seconds, args.guests / seconds, redis_us)
        result.raw[f"admission_{line}_per_s"] = args.guests / seconds
        seconds, cpu_s, redis_s = await _joins(args.guests, url, redis_pid)
        joins.add(line, args.guests, args.guests / seconds, cpu_s / args.guests * 1000, redis_s / args.guests * 1e6)
        result.raw[f"joins_{line}_per_s"] = args.guests / seconds
        latencies = await _deliveries(args.deliveries, url)
        q = statistics.quantiles(latencies, n=100)
        webhooks.add("sqlite" if not url else "redis", args.deliveries, q[49], q[89], q[98])
        result.raw[f"webhook_{line}_p50_ms"] = q[49]
        seconds, cpu_s = await _jobs(args.jobs, args.workers, url)
        pulls.add(line, args.jobs, args.workers, seconds, args.jobs / seconds, cpu_s / args.jobs * 1000)
        result.raw[f"jobs_{line}_per_s"] = args.jobs / seconds
        result.raw[f"jobs_{line}_server_cpu_ms"] = cpu_s / args.jobs * 1000
    result.tables += [admission, joins, webhooks, pulls]
    return result


def _settings(redis_url: str, **more: Any) -> Settings:
    prefix = f"bench{time.monotonic_ns()}"
    return Settings(
        db_path="",
        redis_url=redis_url,
        redis_prefix=prefix,
        token_secret=SECRET,
        max_per_client=10**6,
        max_wait_s=3600,
        request_timeout_s=3600,
        position_update_s=1,
        **more,
    )


async def _admissions(guests: int, redis_url: str) -> float:
    settings = _settings(redis_url, max_queue_size=guests + 10)
    spec = parse_line(
        "room",
        {"mode": "admission", "max_active": guests, "batch_size": 1, "process_interval_sec": 0.0001},
        settings,
        where="bench",
    )
    async with AsyncExitStack() as stack:
        client = httpx.AsyncClient()
        stack.push_async_callback(client.aclose)
        queue = await open_queue(stack, spec.settings, make_upstream(spec.settings, client), None, spec=spec)
        service = queue.service
        began = time.perf_counter()
        tickets = [await service.submit("join", client=f"guest-{n}") for n in range(guests)]
        while not all(t.status is Status.ADMITTED for t in tickets):
            await asyncio.sleep(0.005)
        return time.perf_counter() - began


async def _joins(guests: int, redis_url: str, redis_pid: int) -> tuple[float, float, float]:
    """Seconds for ``guests`` joins at once, this process's CPU seconds and redis-server's for them."""
    settings = _settings(redis_url, max_queue_size=guests + 10)
    # queue_all: the line holds everyone (no call starts), so only joining is measured.
    spec = parse_line("held", {"upstream_url": "http://127.0.0.1:9/", "mode": "queue_all"}, settings, where="bench")
    async with AsyncExitStack() as stack:
        client = httpx.AsyncClient()
        stack.push_async_callback(client.aclose)
        queue = await open_queue(stack, spec.settings, make_upstream(spec.settings, client), None, spec=spec)
        service = queue.service
        began, cpu_s, redis_s = time.perf_counter(), time.process_time(), cpu_seconds(redis_pid)
        await asyncio.gather(*(service.submit(f"question {n}", client=f"guest-{n}") for n in range(guests)))
        seconds, cpu_s = time.perf_counter() - began, time.process_time() - cpu_s
        return seconds, cpu_s, (cpu_seconds(redis_pid) - redis_s) if redis_url else 0.0


async def _deliveries(count: int, redis_url: str) -> list[float]:
    arrived: dict[str, float] = {}

    async def hook(request: Request) -> Response:
        arrived[request.headers["x-guestqueue-delivery"]] = time.perf_counter()
        return Response(status_code=204)

    latencies = []
    async with (
        _served(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as base,
        httpx.AsyncClient() as client,
    ):
        redis = None
        if redis_url:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(redis_url)
        with tempfile.TemporaryDirectory() as tmp:
            outbox = Outbox(
                db_path=str(Path(tmp) / "outbox.db"), client=client, redis=redis, prefix=f"bench{time.monotonic_ns()}"
            )
            await outbox.open()
            hook_spec = Webhook(f"{base}/hook", ("completed",), "a-webhook-secret-for-the-bench")
            try:
                for n in range(count):
                    sent = time.perf_counter()
                    delivery = outbox.post("bench", hook_spec, "completed", {"n": n})
                    while delivery not in arrived:
                        await asyncio.sleep(0.0005)
                    latencies.append((arrived[delivery] - sent) * 1000)
            finally:
                await outbox.close()
                if redis is not None:
                    await redis.aclose()
    return latencies


async def _jobs(jobs: int, workers: int, redis_url: str) -> tuple[float, float]:
    """Seconds for ``jobs`` jobs, and the guestqueue process's CPU seconds meanwhile."""
    config = Path(tempfile.mkdtemp()) / "pull.toml"
    config.write_text(
        f'[lines.gpu]\nupstream_kind = "pull"\nmax_concurrent_requests = {ASKING}\nupstream_interval_sec = 0\n'
    )
    env = {
        "GUEST_CONFIG": str(config),
        "GUEST_DB_PATH": "",
        "GUEST_MAX_PER_CLIENT": "1000000",
        "GUEST_REDIS_URL": redis_url,
        "GUEST_REDIS_PREFIX": f"bench{time.monotonic_ns()}",
    }
    port = free_port()
    server = Server(
        "guestqueue",
        [PY, "-m", "guestqueue", "serve", "--port", str(port), "--log-level", "warning"],
        port,
        "/api/v1/guest/health",
        env=env,
    )

    async def answer(request: WorkflowRequest) -> AsyncIterator[str]:
        yield "ok"

    with server:
        base = server.base
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=ASKING + 10)) as client:
            pool = [PullWorker(base, "gpu", "", answer, concurrency=16) for _ in range(workers)]
            running = [asyncio.create_task(worker.run()) for worker in pool]
            asking = asyncio.Semaphore(ASKING)  # a steady crowd: the pull path's pace, not a long line's

            async def ask(n: int) -> int:
                async with asking:
                    reply = await client.post(f"{base}/api/v1/lines/gpu/chat/simple", json={"query": f"job {n}"})
                    return reply.status_code

            try:
                began = time.perf_counter()
                server.mark()
                codes = await asyncio.gather(*(ask(n) for n in range(jobs)))
                seconds = time.perf_counter() - began
                cpu_s = server.usage().cpu_s
            finally:
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
                for worker in pool:
                    await worker.aclose()
    assert set(codes) == {200}, Counter(codes)
    return seconds, cpu_s


class _served:
    """An ASGI app on uvicorn, in this event loop, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self._port = free_port()
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self._port, log_level="warning", lifespan="on")
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> str:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{self._port}"

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
