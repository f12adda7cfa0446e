"""Scenario 3, resets before the stream starts: connections closed (FIN or RST) right after
the request headers, mid-body, or right after the whole request, hundreds at a time.
Whatever was admitted must end with a row, and every slot and counter must be released."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx

from ..conftest import MockUpstream, serve
from .clients import open_socket, raw_request
from .oracle import (
    Verdict,
    check_drained,
    check_rss,
    drained,
    read_log,
    rss_mb,
    settle_tasks,
    task_count,
    warm_up,
)

MOMENTS = ("after_headers", "mid_body", "after_request")


async def _one(port: int, moment: str, reset: bool, number: int) -> None:
    sock = await open_socket(port, reset_on_close=reset)
    loop = asyncio.get_running_loop()
    head, body = raw_request("/api/v1/guest/chat", json.dumps({"query": f"reset {number}"}).encode())
    try:
        if moment == "after_headers":
            await loop.sock_sendall(sock, head)
        elif moment == "mid_body":
            await loop.sock_sendall(sock, head + body[: len(body) // 2])
        else:
            await loop.sock_sendall(sock, head + body)
        await asyncio.sleep(random.uniform(0, 0.005))
    finally:
        sock.close()


async def resets_before_stream(
    upstream: MockUpstream,
    tmp_path: Path,
    *,
    connections: int = 300,
    batch: int = 50,
    grace_s: float = 0.2,
    rss_bound_mb: float = 40.0,
) -> Verdict:
    verdict = Verdict("resets before the stream")
    db = tmp_path / "resets.db"
    settings: dict[str, Any] = {
        "upstream_url": upstream.url(chunks=2, delay=0.05),
        "max_concurrent_requests": 4,
        "max_queue_size": connections + 10,
        "reconnect_grace_s": grace_s,
        "db_path": str(db),
    }
    began = time.monotonic()
    async with serve(**settings) as running:
        service, server = running.service, running.server
        assert server is not None
        port = int(running.base.split(":")[2].split("/")[0])
        await warm_up(running)
        baseline, rss_before = task_count(), rss_mb()
        open_before = len(server.server_state.connections)
        plan = [(MOMENTS[i % 3], i % 2 == 0) for i in range(connections)]
        for start in range(0, connections, batch):
            await asyncio.gather(*(_one(port, m, r, start + i) for i, (m, r) in enumerate(plan[start : start + batch])))
        verdict.check(await drained(service, grace_s + 10), "tickets still live after the grace")
        await asyncio.sleep(0.2)
        verdict.check(
            len(server.server_state.connections) <= open_before,
            f"{len(server.server_state.connections)} connections still open",
        )
        check_drained(verdict, service)
        await settle_tasks(verdict, baseline)
        check_rss(verdict, rss_before, rss_mb(), rss_bound_mb)
        async with httpx.AsyncClient(timeout=10) as client:  # and the server still serves
            after = await client.post(f"{running.base}/chat/simple", json={"query": "still there?"})
            verdict.check(after.status_code == 200, f"a normal request after the resets: {after.status_code}")
        admitted = service.stats.total_requests - 2  # the warm-up and the last one
    rows = [row for row in read_log(db) if row.query != "still there?"]
    verdict.check(len(rows) == admitted, f"{admitted} admitted, {len(rows)} rows")
    for row in rows:
        verdict.counts[f"row_{row.status}_{row.error_code}"] += 1
        verdict.check(row.status in ("cancelled", "completed", "failed"), f"{row.request_id}: row left {row.status}")
    verdict.figures.update(connections=connections, admitted=admitted, seconds=round(time.monotonic() - began, 1))
    return verdict
