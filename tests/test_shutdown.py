"""SIGTERM on a real `guestqueue serve` process: everyone hears exactly one ending, exit 0."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from .conftest import MockUpstream, Received, ServerProcess, start_server_process, stream_events, wait_until

TERMINAL = {"workflow_complete", "timeout", "error"}


async def _six_guests(server: ServerProcess, client: httpx.AsyncClient) -> list[asyncio.Task[list[Received]]]:
    guests = []
    for i in range(6):
        guests.append(asyncio.create_task(stream_events(client, f"{server.base}/chat", json={"query": f"g{i}"})))
        await asyncio.sleep(0.05)

    async def line_full() -> bool:
        status = (await client.get(f"{server.base}/queue/status")).json()
        return bool(status["active_requests"] == 1 and status["queue_size"] == 5)

    deadline = time.monotonic() + 10
    while not await line_full():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    return guests


async def test_sigterm_lets_running_work_finish_and_ends_the_line(upstream: MockUpstream, tmp_path: Path) -> None:
    db = tmp_path / "shutdown.db"
    server = start_server_process(
        tmp_path, GUEST_UPSTREAM_URL=upstream.url(chunks=4, delay=0.3), GUEST_MAX_CONCURRENT_REQUESTS="1",
        GUEST_UPSTREAM_INTERVAL_SEC="0", GUEST_SHUTDOWN_GRACE_SEC="5", GUEST_DB_PATH=str(db),
    )
    async with httpx.AsyncClient(timeout=30) as client:
        guests = await _six_guests(server, client)
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*guests)
        exit_code = await asyncio.to_thread(server.proc.wait, 20)
        took = time.monotonic() - began
    assert exit_code == 0
    assert took < 5 + 3, f"shutdown took {took:.1f}s"
    for events in results:
        assert sum(e.name in TERMINAL for e in events) == 1 and events[-1].name in TERMINAL
    finals = sorted((e[-1].name, e[-1].data.get("code")) for e in results)
    assert finals == [("error", "shutdown")] * 5 + [("workflow_complete", None)]
    with sqlite3.connect(db) as conn:
        statuses = sorted(s for (s,) in conn.execute("SELECT status FROM requests"))
    assert statuses == ["completed"] + ["failed"] * 5, "the log was flushed with every ending"
    print(f"shutdown with 1 running and 5 waiting took {took:.2f}s")


async def test_sigterm_cuts_work_that_outlasts_the_grace(upstream: MockUpstream, tmp_path: Path) -> None:
    server = start_server_process(
        tmp_path, GUEST_UPSTREAM_URL=upstream.url(mode="hang"), GUEST_MAX_CONCURRENT_REQUESTS="1",
        GUEST_UPSTREAM_INTERVAL_SEC="0", GUEST_SHUTDOWN_GRACE_SEC="1", GUEST_DB_PATH="",
    )
    async with httpx.AsyncClient(timeout=30) as client:
        guests = await _six_guests(server, client)
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: all(g.done() for g in guests[1:]), timeout_s=3, message="waiting guests told")
        results = await asyncio.gather(*guests)
        exit_code = await asyncio.to_thread(server.proc.wait, 20)
        took = time.monotonic() - began
    assert exit_code == 0 and took < 1 + 3
    assert all(r[-1].name == "error" and r[-1].data["code"] == "shutdown" for r in results)
    refused = [r for r in results if sum(e.name in TERMINAL for e in r) != 1]
    assert not refused
