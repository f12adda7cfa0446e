"""Scenario 5, a flood from one client beside many normal ones. Clients are told apart by
``X-Forwarded-For`` from a trusted proxy (127.0.0.1), as behind nginx.

The same normal load runs twice, alone (the baseline) and beside a flooder that keeps
``flood_connections`` requests going all the time; the flooder must be held to
``GUEST_MAX_PER_CLIENT`` at every moment, and no normal request may wait for more than that
many of its calls (the line is FIFO: only flood requests already there when it came can start
first). Mean waits are compared too, with a wide margin: the two runs are seconds apart, and on
a busy machine (the suite runs in four processes) their wall-clock waits differ by more than a
flood capped at two could cause."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

import httpx

from ..conftest import MockUpstream, serve
from .clients import visit
from .oracle import Guest, Verdict, check_drained, check_log, check_streams, read_log

FLOODER = "203.0.113.66"
MAX_PER_CLIENT = 2


async def _normal_load(client: httpx.AsyncClient, base: str, clients: int, each: int) -> list[Guest]:
    async def one_client(number: int) -> list[Guest]:
        headers = {"X-Forwarded-For": f"198.51.100.{number + 1}"}
        return [
            await visit(client, base, {"query": f"normal {number}.{i}"}, headers=headers, label=f"{number}.{i}")
            for i in range(each)
        ]

    found = await asyncio.gather(*(one_client(n) for n in range(clients)))
    return [guest for guests in found for guest in guests]


async def _run(
    upstream: MockUpstream, db: Path, *, clients: int, each: int, flood_connections: int
) -> tuple[list[Guest], list[Guest], Any]:
    settings: dict[str, Any] = {
        "upstream_url": upstream.url(chunks=3, delay=0.1),
        "max_concurrent_requests": 4,
        "max_queue_size": 1000,
        "trusted_proxies": "127.0.0.1",
        "max_per_client": MAX_PER_CLIENT,
        "db_path": str(db),
    }
    flood: list[Guest] = []
    limits = httpx.Limits(max_connections=clients + flood_connections + 10)
    async with serve(**settings) as running, httpx.AsyncClient(timeout=60, limits=limits) as client:
        stop = asyncio.Event()

        async def flooder(lane: int) -> None:
            number = 0
            while not stop.is_set():
                number += 1
                guest = await visit(
                    client,
                    running.base,
                    {"query": f"flood {lane}.{number}"},
                    headers={"X-Forwarded-For": FLOODER},
                    label=f"flood {lane}.{number}",
                )
                flood.append(guest)
                await asyncio.sleep(0)

        lanes = [asyncio.create_task(flooder(lane)) for lane in range(flood_connections)]
        normal = await _normal_load(client, running.base, clients, each)
        stop.set()
        await asyncio.gather(*lanes)
        service = running.service
        await asyncio.sleep(0.1)
        verdict = Verdict("flood drain")
        check_drained(verdict, service)
    return normal, flood, verdict


def _flood_started_during(row: Any, flood_rows: list[Any]) -> int:
    """The flooder's calls that started while ``row`` waited (between its arrival and its start)."""
    if row.started_at is None:
        return 0
    return sum(1 for f in flood_rows if f.started_at is not None and row.created_at < f.started_at < row.started_at)


def _max_open(rows: list[Any]) -> int:
    moments = sorted([(r.created_at, 1) for r in rows] + [(r.finished_at, -1) for r in rows])
    most = current = 0
    for _, step in moments:
        current += step
        most = max(most, current)
    return most


async def flood_beside_normal(
    upstream: MockUpstream,
    tmp_path: Path,
    *,
    clients: int = 24,
    each: int = 3,
    flood_connections: int = 8,
    slowdown: float = 2.0,
    slack_s: float = 1.0,
) -> Verdict:
    verdict = Verdict(f"flood beside {clients} clients")
    base_db, flood_db = tmp_path / "baseline.db", tmp_path / "flood.db"
    alone, _, drain = await _run(upstream, base_db, clients=clients, each=each, flood_connections=0)
    verdict.violations += drain.violations
    normal, flood, drain = await _run(
        upstream, flood_db, clients=clients, each=each, flood_connections=flood_connections
    )
    verdict.violations += drain.violations
    check_streams(verdict, normal + flood)
    rows = read_log(flood_db)
    by_id = check_log(verdict, normal + flood, rows)
    base_rows = check_log(Verdict("baseline"), alone, read_log(base_db))
    served = [g for g in normal if g.terminal is not None and g.terminal.name == "workflow_complete"]
    verdict.check(len(served) == clients * each, f"{len(served)} of {clients * each} normal requests served")
    waits = [by_id[g.request_id].wait_ms or 0.0 for g in normal if g.request_id in by_id]
    base_waits = [base_rows[g.request_id].wait_ms or 0.0 for g in alone if g.request_id in base_rows]
    base_mean, mean = statistics.mean(base_waits) / 1000, statistics.mean(waits) / 1000
    bound = base_mean * slowdown + slack_s
    verdict.check(mean <= bound, f"mean wait {mean:.2f}s beside the flood, alone {base_mean:.2f}s (bound {bound:.2f}s)")
    flood_rows = [r for r in rows if r.client == FLOODER and r.status != "rejected"]
    most = _max_open(flood_rows)
    verdict.check(most <= MAX_PER_CLIENT, f"the flooder had {most} requests open at once")
    ahead = max(
        (_flood_started_during(by_id[g.request_id], flood_rows) for g in normal if g.request_id in by_id), default=0
    )
    verdict.check(ahead <= MAX_PER_CLIENT, f"a normal request waited for {ahead} of the flooder's calls")
    verdict.figures.update(
        baseline_mean_wait_s=round(base_mean, 3),
        flooded_mean_wait_s=round(mean, 3),
        baseline_max_wait_s=round(max(base_waits) / 1000, 3),
        flooded_max_wait_s=round(max(waits) / 1000, 3),
        flood_requests=len(flood),
        flood_admitted=len(flood_rows),
        flood_refused=sum(g.status_code == 429 for g in flood),
        flooder_max_open=most,
        most_flood_calls_waited_for=ahead,
    )
    return verdict
