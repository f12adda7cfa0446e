"""Scenario 4, the process dies: SIGTERM with hundreds in line and tens processing (a real
``guestqueue serve``), and SIGKILL then restart (rows left open become ``abandoned``, the
database passes ``PRAGMA integrity_check``)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from ..conftest import MockUpstream, ServerProcess, start_server_process
from .clients import visit
from .oracle import TERMINAL_STATUSES, Guest, Verdict, check_log, check_streams, integrity_ok, read_log, rss_mb


async def _until(predicate: object, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.05)


def _crowd_env(upstream_url: str, db: Path, workers: int, **extra: str) -> dict[str, str]:
    return {
        "GUEST_UPSTREAM_URL": upstream_url,
        "GUEST_MAX_CONCURRENT_REQUESTS": str(workers),
        "GUEST_MAX_QUEUE_SIZE": "100000",
        "GUEST_MAX_PER_CLIENT": "100000",
        "GUEST_UPSTREAM_INTERVAL_SEC": "0",
        "GUEST_DB_PATH": str(db),
        "GUEST_UPSTREAM_RETRIES": "0",
        **extra,
    }


async def _crowd(
    server: ServerProcess, client: httpx.AsyncClient, waiting: int, processing: int
) -> list[asyncio.Task[Guest]]:
    guests = [
        asyncio.create_task(visit(client, server.base, {"query": f"crowd {i}"}, label=f"crowd {i}"))
        for i in range(waiting + processing)
    ]

    async def all_in() -> bool:
        status = (await client.get(f"{server.base}/queue/status")).json()
        return bool(status["active_requests"] == processing and status["queue_size"] == waiting)

    await _until(all_in, 30, f"{processing} processing and {waiting} in line")
    return guests


async def sigterm_with_crowd(
    upstream: MockUpstream,
    tmp_path: Path,
    *,
    waiting: int = 200,
    processing: int = 20,
    grace_s: float = 1.0,
    rss_bound_mb: float = 80.0,
) -> Verdict:
    verdict = Verdict(f"SIGTERM with {waiting} in line, {processing} processing")
    db = tmp_path / "sigterm.db"
    env = _crowd_env(upstream.url(chunks=8, delay=0.25), db, processing, GUEST_SHUTDOWN_GRACE_SEC=str(grace_s))
    server = start_server_process(tmp_path, **env)
    rss_before = rss_mb(server.proc.pid)
    limits = httpx.Limits(max_connections=waiting + processing + 20)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        guests = await _crowd(server, client, waiting, processing)
        check_rss_at_peak = rss_mb(server.proc.pid)
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*guests)
        exit_code = await asyncio.to_thread(server.proc.wait, 30)
        took = time.monotonic() - began
    verdict.figures.update(
        shutdown_s=round(took, 2), exit_code=exit_code, rss_growth_mb=round(check_rss_at_peak - rss_before, 1)
    )
    verdict.check(exit_code == 0, f"exit code {exit_code}")
    verdict.check(took < grace_s + 3, f"shutdown took {took:.1f}s (grace {grace_s}s)")
    grown = check_rss_at_peak - rss_before
    verdict.check(grown <= rss_bound_mb, f"server memory grew {grown:.0f} MB (bound {rss_bound_mb} MB)")
    check_streams(verdict, results)
    for guest in results:
        verdict.check(guest.connected_to_end, f"{guest.label}: {guest.failure or 'left'}")
    check_log(verdict, results, read_log(db))
    verdict.check(integrity_ok(db), "integrity_check failed")
    return verdict


async def sigkill_then_restart(
    upstream: MockUpstream, tmp_path: Path, *, rounds: int = 1, requests: int = 60, workers: int = 10
) -> Verdict:
    verdict = Verdict(f"SIGKILL then restart, {rounds} round(s) of {requests}")
    db = tmp_path / "sigkill.db"
    accepted: list[Guest] = []
    for number in range(rounds):
        server = start_server_process(tmp_path, **_crowd_env(upstream.url(mode="hang"), db, workers))
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=requests + 20)) as client:
            guests = [
                asyncio.create_task(visit(client, server.base, {"query": f"kill {number}.{i}"}, label=f"{number}.{i}"))
                for i in range(requests)
            ]

            async def logged(number: int = number) -> bool:  # every request's first row is on disk
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    (count,) = conn.execute(
                        "SELECT count(*) FROM requests WHERE query LIKE ?", (f"kill {number}.%",)
                    ).fetchone()
                return bool(count == requests)

            await _until(logged, 30, "the rows written")
            server.proc.kill()
            await asyncio.to_thread(server.proc.wait, 10)
            accepted += await asyncio.gather(*guests)
    # The next start marks what the killed processes left open.
    server = start_server_process(tmp_path, **_crowd_env(upstream.url(), db, workers))
    async with httpx.AsyncClient(timeout=30) as client:
        after = await client.post(f"{server.base}/chat/simple", json={"query": "after the restarts"})
        verdict.check(after.status_code == 200, f"a request after the restart: {after.status_code}")
    server.proc.send_signal(signal.SIGTERM)
    verdict.check(await asyncio.to_thread(server.proc.wait, 30) == 0, "restarted server did not exit cleanly")
    rows = [row for row in read_log(db) if row.query != "after the restarts"]
    for guest in accepted:
        verdict.check(guest.terminal is None, f"{guest.label}: a terminal event from a killed server?")
        guest.failure = guest.failure or "killed"
    check_streams(verdict, accepted)
    check_log(verdict, accepted, rows, terminal=TERMINAL_STATUSES | {"abandoned"})
    verdict.check(all(row.status == "abandoned" for row in rows), "rows open at the kill not all abandoned")
    verdict.check(integrity_ok(db), "integrity_check failed")
    verdict.figures.update(rounds=rounds, rows=len(rows), abandoned=sum(r.status == "abandoned" for r in rows))
    return verdict
