"""The load driver, run as its own process: ``python -m bench.driver`` reads a JSON job on stdin.

It speaks each server's own protocol (see :mod:`bench.targets`) and prints
JSON lines on stdout: ``{"phase": "measure"}`` when a waiting-guests job has
every guest connected (the harness then starts its CPU window), and finally
``{"result": ...}``. Times are ``time.monotonic()``, which on Linux is the
same clock in every process, so they compare with the mock upstream's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from collections import defaultdict
from typing import Any

import aiohttp

from .stats import summary
from .targets import Target, target_from_job

Job = dict[str, Any]


def emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def streams(target: Target, job: Job) -> dict[str, Any]:
    """Keep ``concurrency`` streams in flight for ``duration_s`` (or until ``count`` finished)."""
    concurrency, duration_s, count = job["concurrency"], job.get("duration_s", 3600.0), job.get("count", 10**9)
    ttfc: list[float] = []
    totals: list[float] = []
    errors: list[str] = []
    started = 0
    begin = time.monotonic()
    deadline = begin + duration_s

    async def worker(n: int) -> None:
        nonlocal started
        while started < count and time.monotonic() < deadline:
            started += 1
            t0 = time.monotonic()
            first = None
            try:
                async for name, _ in target.events(f"q{n}-{started}"):
                    if name == "answer_chunk" and first is None:
                        first = time.monotonic() - t0
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            if first is None:
                errors.append("no answer chunk")
                continue
            ttfc.append(first)
            totals.append(time.monotonic() - t0)

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.monotonic() - begin
    return {
        "completed": len(totals),
        "elapsed_s": elapsed,
        "streams_per_s": len(totals) / elapsed,
        "ttfc_ms": summary([t * 1000 for t in ttfc]),
        "total_ms": summary([t * 1000 for t in totals]),
        "errors": len(errors),
        "error_sample": errors[:3],
    }


async def waiters(target: Target, job: Job) -> dict[str, Any]:
    """Hold ``count`` waiting guests behind one blocker; measure position updates for ``measure_s``."""
    count, interval_s = job["count"], job["interval_s"]
    arrivals: dict[int, list[float]] = defaultdict(list)
    connected: set[int] = set()
    failures: list[str] = []
    window = [float("inf"), float("inf")]

    async def guest(n: int, query: str) -> None:
        try:
            async for name, _ in target.events(query):
                if name == "queued":
                    now = time.monotonic()
                    if n >= 0:
                        connected.add(n)
                    if window[0] <= now <= window[1]:
                        arrivals[n].append(now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}"[:200])

    tasks = [asyncio.ensure_future(guest(-1, "blocker dur=3600"))]
    await asyncio.sleep(0.5)
    ramp_s = 1.0 / job.get("ramp_per_s", 1000)
    for n in range(count):
        tasks.append(asyncio.ensure_future(guest(n, f"waiter {n}")))
        await asyncio.sleep(ramp_s)
    deadline = time.monotonic() + job.get("connect_timeout_s", 60.0)
    while len(connected) < count and time.monotonic() < deadline and len(failures) < count:
        await asyncio.sleep(0.1)
    await asyncio.sleep(job.get("settle_s", 3.0))
    emit({"phase": "measure", "connected": len(connected)})
    window[0] = time.monotonic()
    window[1] = window[0] + job["measure_s"]
    await asyncio.sleep(job["measure_s"])
    emit({"phase": "measured"})
    # Lateness of each update against its due time (previous update + interval); a guest
    # that heard nothing in the window counts as one update late by the whole window.
    late: list[float] = []
    updates = 0
    for n in range(count):
        times = [window[0], *arrivals.get(n, []), window[1]]
        updates += len(times) - 2
        late.extend(max(0.0, b - a - interval_s) for a, b in itertools.pairwise(times))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "guests": count,
        "connected": len(connected),
        "failures": len(failures),
        "failure_sample": failures[:3],
        "measure_s": job["measure_s"],
        "updates": updates,
        "updates_per_s": updates / job["measure_s"],
        "delay_ms": summary([x * 1000 for x in late]),
        "within_1s": sum(1 for x in late if x <= 1.0) / len(late) if late else 0.0,
    }


async def eta(target: Target, job: Job) -> dict[str, Any]:
    """Arrivals at ``rate_per_s`` with durations drawn from [``dur_min``, ``dur_max``]; estimate vs. real wait."""
    rng = random.Random(job.get("seed", 1))
    rows: list[dict[str, Any]] = []

    async def one(n: int, dur: float) -> None:
        row: dict[str, Any] = {"n": n, "dur_s": dur}
        t0 = time.monotonic()
        async for name, data in target.events(f"guest {n} dur={dur:.3f}"):
            if name == "queued" and "estimate_s" not in row:  # the estimate given at admission
                row["estimate_s"] = data.get("estimate_s")
                row["range_s"] = data.get("range_s")  # guestqueue's p10-p90
                row["position"] = data.get("position")
            elif name == "processing":
                row["wait_s"] = time.monotonic() - t0
            elif name == "done":
                row["result_s"] = time.monotonic() - t0
        rows.append(row)

    tasks = []
    for n in range(job["count"]):
        tasks.append(asyncio.ensure_future(one(n, rng.uniform(job["dur_min"], job["dur_max"]))))
        await asyncio.sleep(rng.expovariate(job["rate_per_s"]))
    await asyncio.gather(*tasks)
    return {"rows": sorted(rows, key=lambda r: r["n"])}


async def run(job: Job) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, force_close=job.get("force_close", False))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        target = await target_from_job(session, job)
        mode = job["mode"]
        if mode == "streams":
            return await streams(target, job)
        if mode == "waiters":
            return await waiters(target, job)
        if mode == "eta":
            return await eta(target, job)
        raise ValueError(f"unknown mode {mode!r}")


def main() -> None:
    job = json.loads(sys.stdin.read())
    try:
        import uvloop

        result = uvloop.run(run(job))
    except ImportError:
        result = asyncio.run(run(job))
    emit({"result": result})


if __name__ == "__main__":
    main()
