"""Scenario 5, the SQLite request log: rows per second, and stream throughput with the log on vs off.

The log itself (``guestqueue/store.py``) is being written on main; this
branch does not have it, so both guestqueue figures report *pending* until a
module named by ``--store-module`` exists and offers the interface below. What
runs today is the reference the log will be judged against: plain aiosqlite
``executemany`` in batches, on the same disk, with the same row shape.

The interface the harness expects (keep it or adapt :func:`_guestqueue_rows_per_s`)::

    log = RequestLog(path)          # class in the store module
    await log.open()
    log.record(ticket_summary_dict) # non-blocking; batched behind the scenes
    await log.close()               # flushes everything
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import tempfile
import time
from pathlib import Path
from typing import Any

from ..report import Result, Table

ROW = {"request_id": "0" * 32, "status": "completed", "client": "127.0.0.1", "created_at": 0.0, "started_at": 0.0,
       "finished_at": 0.0, "wait_ms": 12.3, "duration_ms": 456.7, "error_code": None, "query_chars": 42}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--store-module", default="guestqueue.store")


def smoke(args: argparse.Namespace) -> None:
    args.rows, args.batch = 2_000, 100


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


async def _guestqueue_rows_per_s(module: Any, path: Path, rows: int) -> float:
    log = module.RequestLog(path)
    await log.open()
    began = time.perf_counter()
    for n in range(rows):
        log.record({**ROW, "request_id": f"{n:032x}"})
    await log.close()
    return rows / (time.perf_counter() - began)


def run(args: argparse.Namespace) -> Result:
    result = Result("logwriter", {"rows": args.rows, "batch": args.batch, "store_module": args.store_module})
    table = Table("SQLite request log: rows per second", ["writer", "rows", "rows/s", "status"])
    with tempfile.TemporaryDirectory() as tmp:
        reference = asyncio.run(_reference_rows_per_s(Path(tmp) / "ref.db", args.rows, args.batch))
        table.add(f"aiosqlite executemany x{args.batch} (reference)", args.rows, reference, "measured")
        try:
            module = importlib.import_module(args.store_module)
        except ImportError:
            module = None
        if module is None or not hasattr(module, "RequestLog"):
            table.add(f"{args.store_module}.RequestLog", args.rows, None, "pending: not on this branch")
            result.target("log rows/s", None, "≥ 100000", None)
            result.target("throughput log on ÷ off", None, "≥ 0.95", None)
        else:
            rate = asyncio.run(_guestqueue_rows_per_s(module, Path(tmp) / "gq.db", args.rows))
            table.add(f"{args.store_module}.RequestLog", args.rows, rate, "measured")
            result.target("log rows/s", round(rate), "≥ 100000", rate >= 100_000)
            # Throughput with it on vs off: `python -m bench run overhead --servers guestqueue` twice, with and
            # without --db-path; not automated until the log exists to be switched.
            result.target("throughput log on ÷ off", None, "≥ 0.95", None)
    result.tables.append(table)
    result.raw["reference_rows_per_s"] = reference
    return result
