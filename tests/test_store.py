"""The SQLite request log: one row per request, batched writes, crash recovery."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from guestqueue.store import RequestLog
from guestqueue.tickets import Status, Ticket

from .conftest import MockUpstream, ask, serve, start_server_process, stream_events, wait_until


def _rows(db: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {row["request_id"]: dict(row) for row in conn.execute("SELECT * FROM requests")}


async def test_one_row_per_request_after_a_mixed_run(upstream: MockUpstream, tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    ok, _ = upstream.tagged(chunks=2, delay=0.2)
    async with httpx.AsyncClient(timeout=30) as client:
        async with serve(upstream_url=ok, db_path=str(db), max_concurrent_requests=1, max_queue_size=2) as running:
            done = asyncio.create_task(ask(client, running.base, "success", parameters={"lang": "en"}))
            await wait_until(lambda: len(running.service.pool.active) == 1)
            cancelled = asyncio.create_task(ask(client, running.base, "cancelled"))
            await wait_until(lambda: len(running.service.line) == 1)
            cancel_id = running.service.line.flights()[0].tickets[0].id
            await client.delete(f"{running.base}/chat/{cancel_id}")
            left = await stream_events(client, f"{running.base}/chat", json={"query": "leaves"}, stop_after="queued")
            full = [asyncio.create_task(ask(client, running.base, f"fill {i}")) for i in range(2)]
            await wait_until(lambda: len(running.service.line) == 2)
            rejected = await client.post(f"{running.base}/chat", json={"query": "rejected"})
            assert rejected.status_code == 429
            results = [await done, await cancelled, *await asyncio.gather(*full)]
        async with serve(upstream_url=upstream.url(mode="status", status=500), db_path=str(db)) as running:
            failed = await ask(client, running.base, "fails")
        async with serve(upstream_url=upstream.url(mode="hang"), db_path=str(db), request_timeout_s=0.3) as running:
            timed_out = await ask(client, running.base, "times out")
    rows = _rows(db)
    by_query = {row["query"]: row for row in rows.values()}
    assert len(rows) == 8, "one row per request, rejected one included"
    expected = {
        "success": ("completed", None), "cancelled": ("cancelled", "cancelled"),
        "leaves": ("cancelled", "disconnected"),
        "fill 0": ("completed", None), "fill 1": ("completed", None), "rejected": ("rejected", "queue_full"),
        "fails": ("failed", "upstream_error"), "times out": ("timeout", "timeout"),
    }
    for query, (status, code) in expected.items():
        assert (by_query[query]["status"], by_query[query]["error_code"]) == (status, code), query
    success = by_query["success"]
    assert success["answer"] == "chunk0 chunk1 " and success["parameters"] == '{"lang":"en"}'
    assert success["client"] == "127.0.0.1" and success["cached"] == 0
    assert success["started_at"] >= success["created_at"] and success["finished_at"] >= success["started_at"]
    assert success["wait_ms"] is not None and success["processing_ms"] > 100
    assert by_query["leaves"]["started_at"] is None, "a guest who left was never sent upstream"
    ids = {e.data["request_id"] for r in (*results, left, failed, timed_out) for e in r[:1]}
    assert ids <= set(rows)


async def test_writer_batches_and_flushes_on_close(tmp_path: Path) -> None:
    log = RequestLog(str(tmp_path / "batch.db"))
    await log.open()
    tickets = [Ticket(f"q{i}", "c") for i in range(5000)]
    began = time.perf_counter()
    for ticket in tickets:
        log.record(ticket)
    for ticket in tickets:
        ticket.end(Status.COMPLETED)
        log.record(ticket)
    await log.close()
    elapsed = time.perf_counter() - began
    assert log.rows_written == 10_000 and log.batches < 100, "rows go in batches, not one await each"
    rows = _rows(tmp_path / "batch.db")
    assert len(rows) == 5000 and {r["status"] for r in rows.values()} == {"completed"}
    print(f"request log: {10_000 / elapsed:,.0f} rows/s")


async def test_degraded_health_when_the_log_cannot_write(upstream: MockUpstream, tmp_path: Path) -> None:
    async with serve(upstream_url=upstream.url(), db_path=str(tmp_path / "ro.db")) as running, \
            httpx.AsyncClient(timeout=10) as client:
        await running.service.log._db.execute("PRAGMA query_only = ON")  # every write now fails
        await client.post(f"{running.base}/chat/simple", json={"query": "x"})
        await wait_until(lambda: running.service.log.failing, message="writer notices")
        health = (await client.get(f"{running.base}/health")).json()
        assert health["status"] == "degraded" and "log" in health["problems"][0]
        await running.service.log._db.execute("PRAGMA query_only = OFF")
        await wait_until(lambda: not running.service.log.failing, timeout_s=5, message="writer recovers")
        assert (await client.get(f"{running.base}/health")).json()["status"] == "ok"


def test_sigkill_then_restart_marks_open_rows_abandoned(upstream: MockUpstream, tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    env = {"GUEST_DB_PATH": str(db), "GUEST_UPSTREAM_URL": upstream.url(mode="hang"),
           "GUEST_UPSTREAM_INTERVAL_SEC": "0", "GUEST_MAX_CONCURRENT_REQUESTS": "1"}
    server = start_server_process(tmp_path, **env)
    streams = []
    try:
        client = httpx.Client(timeout=10)
        for i in range(3):
            stream = client.stream("POST", f"{server.base}/chat", json={"query": f"q{i}"})
            stream.__enter__()
            streams.append(stream)
        deadline = time.monotonic() + 10
        while len(_rows(db)) < 3 or not any(r["status"] == "processing" for r in _rows(db).values()):
            assert time.monotonic() < deadline, _rows(db)
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    restarted = start_server_process(tmp_path, **env)
    try:
        rows = _rows(db)
        assert len(rows) == 3 and {r["status"] for r in rows.values()} == {"abandoned"}
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        restarted.proc.send_signal(signal.SIGTERM)
        assert restarted.proc.wait(timeout=20) == 0


async def test_a_row_sqlite_cannot_take_does_not_stall_the_log(tmp_path: Path) -> None:
    # Found by the chaos suite: one row with a lone surrogate (not UTF-8) failed every batch it was in,
    # forever, so no later row was ever written either.
    log = RequestLog(str(tmp_path / "poison.db"))
    await log.open()
    bad = Ticket("q\ud800", "client")
    log.record(bad)  # its admission
    bad.end(Status.FAILED, error="upstream said \udfff", error_code="upstream_error")
    log.record(bad)  # its end
    good = Ticket("fine", "client")
    log.record(good)
    await wait_until(lambda: log.rows_written == 3, timeout_s=5, message="every row written")
    assert not log.failing
    await log.close()
    rows = _rows(tmp_path / "poison.db")
    assert rows[bad.id]["query"] == "q\ufffd" and rows[bad.id]["error"] == "upstream said \ufffd"
    assert rows[good.id]["status"] == "queued"
