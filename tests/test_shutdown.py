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
    # The running call waits at a gate until all six are in (a loaded machine once finished a
    # 1.2 s call before the sixth guest had joined), then takes 1.2 s, well within the grace.
    gate = f"shutdown-{time.monotonic_ns()}"
    server = start_server_process(
        tmp_path,
        GUEST_UPSTREAM_URL=upstream.url(chunks=4, delay=0.3, gate=gate),
        GUEST_MAX_CONCURRENT_REQUESTS="1",
        GUEST_UPSTREAM_INTERVAL_SEC="0",
        GUEST_SHUTDOWN_GRACE_SEC="5",
        GUEST_DB_PATH=str(db),
    )
    async with httpx.AsyncClient(timeout=30) as client:
        guests = await _six_guests(server, client)
        await upstream.open_gate(gate)
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
        tmp_path,
        GUEST_UPSTREAM_URL=upstream.url(mode="hang"),
        GUEST_MAX_CONCURRENT_REQUESTS="1",
        GUEST_UPSTREAM_INTERVAL_SEC="0",
        GUEST_SHUTDOWN_GRACE_SEC="1",
        GUEST_DB_PATH="",
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


async def test_new_guests_during_the_drain_hear_503_shutting_down(upstream: MockUpstream, tmp_path: Path) -> None:
    # Before: uvicorn stopped listening at the signal, so a guest arriving during the drain got
    # "connection refused" instead of the 503 `shutting_down` DESIGN.md promises.
    server = start_server_process(
        tmp_path,
        GUEST_UPSTREAM_URL=upstream.url(mode="hang"),
        GUEST_UPSTREAM_INTERVAL_SEC="0",
        GUEST_SHUTDOWN_GRACE_SEC="2",
        GUEST_DB_PATH="",
    )
    async with httpx.AsyncClient(timeout=30) as client:
        running = asyncio.create_task(stream_events(client, f"{server.base}/chat", json={"query": "long"}))
        deadline = time.monotonic() + 10
        while (await client.get(f"{server.base}/queue/status")).json()["active_requests"] != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        answers = []
        while time.monotonic() - began < 1.5:  # well inside the 2 s grace
            async with httpx.AsyncClient(timeout=5) as fresh:  # a new connection each time
                refused = await fresh.post(f"{server.base}/chat", json={"query": "late"})
            answers.append((refused.status_code, refused.json()["code"]))
            await asyncio.sleep(0.2)
        health = await client.get(f"{server.base}/health")
        events = await running
        exit_code = await asyncio.to_thread(server.proc.wait, 20)
    assert answers and set(answers) == {(503, "shutting_down")}
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert events[-1].name == "error" and events[-1].data["code"] == "shutdown"
    assert exit_code == 0


async def test_a_second_signal_exits_at_once(upstream: MockUpstream, tmp_path: Path) -> None:
    # The first SIGTERM drains for up to the grace (30 s here); a second one does not wait for it,
    # and the request log's thread is closed even then (left open, it kept the process alive).
    db = tmp_path / "forced.db"
    server = start_server_process(
        tmp_path,
        GUEST_UPSTREAM_URL=upstream.url(mode="hang"),
        GUEST_UPSTREAM_INTERVAL_SEC="0",
        GUEST_SHUTDOWN_GRACE_SEC="30",
        GUEST_DB_PATH=str(db),
    )
    async with httpx.AsyncClient(timeout=30) as client:
        running = asyncio.create_task(stream_events(client, f"{server.base}/chat", json={"query": "long"}))
        deadline = time.monotonic() + 10
        while (await client.get(f"{server.base}/queue/status")).json()["active_requests"] != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert server.proc.poll() is None, "still draining"
        began = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(server.proc.wait, 5)
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
        took = time.monotonic() - began
        await asyncio.gather(running, return_exceptions=True)
    assert took < 3, f"the second signal took {took:.1f}s"
    restarted = start_server_process(tmp_path, GUEST_DB_PATH=str(db))
    restarted.proc.send_signal(signal.SIGTERM)
    assert restarted.proc.wait(timeout=20) == 0
    with sqlite3.connect(db) as conn:
        assert [s for (s,) in conn.execute("SELECT status FROM requests")] == ["abandoned"]
