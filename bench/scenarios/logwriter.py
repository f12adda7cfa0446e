"""Scenario 5, the SQLite request log: rows per second, and stream throughput with the log on vs off.

Rows per second drives guestqueue's own :class:`~guestqueue.requestlog.RequestLog`
with real tickets (an admission row and an end row each, the INSERT and UPDATE the
server writes), next to a reference: plain aiosqlite ``executemany`` INSERTs
in batches on the same disk. Throughput on vs off runs two guestqueue servers,
``--db-path`` set and empty, taking turns under the same streaming load.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from guestqueue.requestlog import RequestLog
from guestqueue.tickets import Status, Ticket

from .. import servers
from ..report import Result, Table
from ..stats import spread

ROW = {
    "request_id": "0" * 32,
    "status": "completed",
    "client": "127.0.0.1",
    "created_at": 0.0,
    "started_at": 0.0,
    "finished_at": 0.0,
    "wait_ms": 12.3,
    "duration_ms": 456.7,
    "error_code": None,
    "query_chars": 42,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=200_000, help="rows written (half admissions, half ends)")
    parser.add_argument("--batch", type=int, default=500, help="reference writer's batch size")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds, log on and off once each")
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)


def smoke(args: argparse.Namespace) -> None:
    args.rows, args.batch, args.rounds, args.duration_s, args.concurrency = 2_000, 100, 1, 0.5, 4


async def _reference_rows_per_s(path: Path, rows: int, batch: int) -> float:
    import aiosqlite

    columns = list(ROW)
    sql = f"INSERT INTO requests ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute(f"CREATE TABLE requests ({', '.join(columns)})")
        values = [tuple(ROW.values())] * batch
        began = time.perf_counter()
        for _ in range(rows // batch):
            await db.executemany(sql, values)
            await db.commit()
        return (rows // batch * batch) / (time.perf_counter() - began)


async def _guestqueue_rows_per_s(path: Path, rows: int) -> float:
    """Rows per second through RequestLog, recorded in bursts the way a busy loop would."""
    tickets = [Ticket(f"question number {n}", "127.0.0.1", {"lang": "en"}) for n in range(rows // 2)]
    log = RequestLog(str(path), buffer_rows=rows)  # a benchmark of throughput: never drop
    await log.open()
    began = time.perf_counter()
    for start in range(0, len(tickets), 1000):
        for ticket in tickets[start : start + 1000]:
            log.record(ticket)  # admission
        await asyncio.sleep(0)
    for start in range(0, len(tickets), 1000):
        for ticket in tickets[start : start + 1000]:
            ticket.answer_parts.append("an answer of a few words")
            ticket.end(Status.COMPLETED)
            log.record(ticket)  # the end, on the same row
        await asyncio.sleep(0)
    await log.close()
    return log.rows_written / (time.perf_counter() - began)


def run(args: argparse.Namespace) -> Result:
    names = ("rows", "batch", "rounds", "duration_s", "concurrency")
    result = Result("logwriter", {k: getattr(args, k) for k in names})
    table = Table("SQLite request log: rows per second", ["writer", "rows", "rows/s"])
    with tempfile.TemporaryDirectory() as tmp:
        reference = asyncio.run(_reference_rows_per_s(Path(tmp) / "ref.db", args.rows, args.batch))
        table.add(f"aiosqlite executemany x{args.batch} INSERT (reference)", args.rows, reference)
        rate = asyncio.run(_guestqueue_rows_per_s(Path(tmp) / "gq.db", args.rows))
        table.add("guestqueue RequestLog (INSERT + UPDATE per request)", args.rows, rate)
        result.target("log rows/s", round(rate), ">= 100000", rate >= 100_000)
        ratio, runs = _throughput_on_vs_off(args, Path(tmp) / "server.db")
    result.tables.append(table)
    on, off = spread(runs["on"]), spread(runs["off"])
    throughput = Table(
        "streams/s with the log on and off (median [min-max] over rounds)", ["log", "streams/s", "range"]
    )
    for name, stats in (("on", on), ("off", off)):
        throughput.add(name, stats.get("median"), f"{stats.get('min', 0):.0f}-{stats.get('max', 0):.0f}")
    result.tables.append(throughput)
    result.target("throughput log on / off", round(ratio, 3), ">= 0.95", ratio >= 0.95)
    result.raw.update(reference_rows_per_s=reference, guestqueue_rows_per_s=rate, throughput=runs)
    return result


def _throughput_on_vs_off(args: argparse.Namespace, db: Path) -> tuple[float, dict[str, list[float]]]:
    runs: dict[str, list[float]] = {"on": [], "off": []}
    with ExitStack() as stack:
        mock = stack.enter_context(servers.mock())
        url = f"{mock.base}/chat?chunks=20"
        slots = max(args.concurrency * 2, 64)
        started = {
            "on": stack.enter_context(
                servers.guestqueue(url, concurrency=slots, queue_size=10_000, extra=["--db-path", str(db)])
            ),
            "off": stack.enter_context(servers.guestqueue(url, concurrency=slots, queue_size=10_000)),
        }
        for round_no in range(args.rounds):
            for name in ("on", "off") if round_no % 2 == 0 else ("off", "on"):
                load: dict[str, Any] = servers.drive(
                    {
                        "kind": "guestqueue",
                        "url": started[name].base,
                        "mode": "streams",
                        "concurrency": args.concurrency,
                        "duration_s": args.duration_s,
                    }
                )
                runs[name].append(float(load["streams_per_s"]))
    on, off = spread(runs["on"]), spread(runs["off"])
    return (on["median"] / off["median"] if off.get("median") else 0.0), runs
