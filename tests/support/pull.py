"""Helpers for pull lines: the jobs API's URLs, receiving and following jobs, a worker process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from ..conftest import Received
from ..redis_server import RedisServer, run_redis
from ..tcp_proxy import TcpProxy
from .lines import serve_lines

PULL = '[lines.gpu]\nupstream_kind = "pull"\nmax_concurrent_requests = 2\nupstream_interval_sec = 0\n'


ROOT = Path(__file__).resolve().parents[2]


async def receive_jobs(client: httpx.AsyncClient, lines: str, **body: Any) -> list[dict[str, Any]]:
    reply = await client.post(f"{lines}/gpu/jobs/receive", json={"wait_sec": 5, **body})
    assert reply.status_code == 200, reply.text
    jobs: list[dict[str, Any]] = reply.json()["jobs"]
    return jobs


async def follow_job(client: httpx.AsyncClient, url: str, body: dict[str, Any], heard: list[Received]) -> None:
    """A guest's events, into ``heard`` as they come."""
    async with aconnect_sse(client, "POST", url, json=body) as source:
        async for sse in source.aiter_sse():
            if sse.data:
                heard.append(Received(sse.event, sse.id, json.loads(sse.data)["data"]))


def jobs_url(base: str) -> str:
    return base.split("/api/v1/")[0] + "/api/v1/jobs"


@contextmanager
def worker_process(
    tmp_path: Path, server: str, name: str, workflow: str, *, visibility_s: float = 1
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "GUEST_TEST_WORKER": name, "PYTHONPATH": str(ROOT)}
    log = (tmp_path / f"worker-{name}.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guestqueue",
            "worker",
            "--server",
            server,
            "--line",
            "gpu",
            "--visibility-timeout",
            str(visibility_s),
            f"tests.pull_workflows:{workflow}",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


class Outage:
    """What a test does to Redis: ``unreachable`` (connections dropped and refused, data kept) or
    ``empty`` (killed and started again without persistence)."""

    def __init__(self, kind: str, server: RedisServer, proxy: TcpProxy) -> None:
        self.kind, self._server, self._proxy = kind, server, proxy

    @property
    def url(self) -> str:
        return self._proxy.url

    async def begin(self) -> None:
        if self.kind == "unreachable":
            await self._proxy.cut()
        else:
            await asyncio.to_thread(self._server.stop)

    async def end(self) -> None:
        if self.kind == "unreachable":
            await self._proxy.mend()
        else:
            await asyncio.to_thread(self._server.start)


@asynccontextmanager
async def pull_line(tmp_path: Path, kind: str, toml: str = PULL) -> AsyncIterator[tuple[Any, str, Outage]]:
    """One guestqueue on its own Redis (through a proxy a test may cut): (running, lines URL, outage)."""
    with run_redis() as server:
        async with TcpProxy(server.port) as proxy:
            outage = Outage(kind, server, proxy)
            async with serve_lines(tmp_path, toml, redis_url=outage.url, redis_prefix="pull") as (running, lines):
                yield running, lines, outage
