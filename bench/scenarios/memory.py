"""Memory that grows with guests: riders of one answer, and finished requests' event logs.

Both run the queue in this process (no HTTP: the memory measured is the
queue's own, not the connections'). Riders: ``--riders`` guests ask the same
question at once and ride one upstream call that streams ``--chunks`` chunks;
the Python heap (tracemalloc) grown per rider is measured with every chunk
sent and the call still open. Finished: ``--requests`` short requests end at
``--rate`` per second; the process's resident memory is read at the end, with
the number of finished requests whose whole event log is still kept.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from guestqueue import Settings
from guestqueue.runtime import run_queue
from guestqueue.service import QueueService
from guestqueue.upstream import PythonUpstream, WorkflowRequest

from ..report import Result, Table

QUIET: dict[str, Any] = {"db_path": "", "upstream_interval_s": 0.0, "max_per_client": 10**6, "upstream_retries": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--riders", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--requests", type=int, default=100_000, help="finished requests")
    parser.add_argument("--rate", type=float, default=200.0, help="finished requests per second")


def smoke(args: argparse.Namespace) -> None:
    args.riders, args.chunks, args.requests, args.rate = 50, 20, 500, 2000.0


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _riders(riders: int, chunks: int) -> float:
    """KiB of Python heap per rider of one streamed answer."""
    all_sent, release = asyncio.Event(), asyncio.Event()

    async def answer(request: WorkflowRequest) -> AsyncIterator[str]:
        for n in range(chunks):
            yield f"word{n:05d} "
        all_sent.set()
        await release.wait()

    settings = Settings(**QUIET, max_concurrent_requests=1, max_queue_size=10, cache_size=100)
    async with run_queue(settings, PythonUpstream(answer)) as queue:
        return await _measure_riders(queue.service, riders, all_sent, release)


async def _measure_riders(service: QueueService, riders: int, all_sent: asyncio.Event, release: asyncio.Event) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    tickets = [await service.submit("the same question", client=f"guest{n}") for n in range(riders)]
    await asyncio.wait_for(all_sent.wait(), 60)
    await asyncio.sleep(0.1)
    for ticket in tickets:  # what a stream reads: every event, encoded
        for event in ticket.events.after(0):
            event.encode()
    gc.collect()
    grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    release.set()
    return grown / riders / 1024


async def _finished(requests: int, rate: float) -> tuple[float, int]:
    """Resident MiB after ``requests`` finished at ``rate``/s, and full event logs still kept."""

    async def answer(request: WorkflowRequest) -> AsyncIterator[str]:
        for n in range(10):
            yield f"part {n} of a short answer "

    settings = Settings(**QUIET, max_concurrent_requests=50, max_queue_size=10_000, cache_size=0)
    async with run_queue(settings, PythonUpstream(answer)) as queue:
        return await _run_finished(queue.service, requests, rate)


async def _run_finished(service: QueueService, requests: int, rate: float) -> tuple[float, int]:
    tickets = []
    began = time.monotonic()
    for n in range(requests):
        tickets.append(await service.submit(f"question {n}", client="guest"))
        if len(tickets) >= 1000:  # hold only a batch: the queue alone decides what stays alive
            tickets = [t for t in tickets if not t.done]
        await asyncio.sleep(max(0.0, began + (n + 1) / rate - time.monotonic()))
    while service.registry.live():
        await asyncio.sleep(0.05)
    gc.collect()
    rss = rss_mib()
    full = sum(1 for t in service.registry._finished.values() if len(t.events.after(0)) > 1)
    return rss, full


def run(args: argparse.Namespace) -> Result:
    result = Result("memory", {k: getattr(args, k) for k in ("riders", "chunks", "requests", "rate")})
    per_rider = asyncio.run(_riders(args.riders, args.chunks))
    riders = Table("riders of one answer", ["riders", "chunks", "KiB per rider"])
    riders.add(args.riders, args.chunks, per_rider)
    result.tables.append(riders)
    rss, full = asyncio.run(_finished(args.requests, args.rate))
    finished = Table("finished requests", ["requests", "per second", "resident MiB", "full logs kept"])
    finished.add(args.requests, args.rate, rss, full)
    result.tables.append(finished)
    result.raw.update(kib_per_rider=per_rider, rss_mib=rss, full_logs=full)
    return result
