"""What a stranger's request costs the server (issue 20 points 3 and 6), on any checkout of guestqueue.

    python -m bench.strangers [--source DIR] [--slots 100000] [--answer-mib 160] [--pull-mib 175]

Runs one guestqueue process from ``--source`` (a checkout; default this one) with the mock
upstream of this checkout, and sends it, each against a fresh server:

- ``slots``: an admin call making a line with ``--slots`` concurrent requests (the review sent
  2**64; fewer here, so that the old code's growth can be measured without the kernel killing it);
- ``tick``: an admin call making a line with ``position_update_sec = 1e-300`` and one guest waiting;
- ``stream``: a guest whose upstream streams ``--answer-mib`` MiB;
- ``pull``: a pull worker posting ``--pull-mib`` MiB of NDJSON chunks for one job.

For each it prints what the server answered, its RSS growth (at the end and 10 s later), its CPU
share and the worst ``/health`` latency while it happened, and the SQLite log's growth. Run it on
the previous main and on this one, on the same machine, one after the other:

    git worktree add /tmp/gq-before <previous main> && python -m bench.strangers --source /tmp/gq-before
    python -m bench.strangers
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from .procs import ROOT, cpu_seconds, free_port, rss_bytes

MIB = 1024 * 1024
SCENARIOS = ("slots", "tick", "stream", "pull")


@contextmanager
def process(argv: list[str], cwd: Path, env: dict[str, str], port: int, path: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv} did not start")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def db_bytes(db: Path) -> int:
    """The log's file with its write-ahead log (rows not yet checkpointed are there)."""
    return sum(path.stat().st_size for path in (db, db.with_name(db.name + "-wal")) if path.exists())


class Watch:
    """/health's worst latency and the process's CPU while a scenario runs."""

    def __init__(self, base: str, pid: int) -> None:
        self.base, self.pid, self.worst_s, self._stop = base, pid, 0.0, False

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            while not self._stop:
                began = time.monotonic()
                try:
                    await client.get(f"{self.base}/api/v1/guest/health")
                except httpx.HTTPError:
                    pass
                self.worst_s = max(self.worst_s, time.monotonic() - began)
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop = True


async def scenario(name: str, base: str, pid: int, db: Path, args: argparse.Namespace, mock: str) -> dict[str, Any]:
    rss0, db0, cpu0, t0 = rss_bytes(pid), db_bytes(db), cpu_seconds(pid), time.monotonic()
    watch = Watch(base, pid)
    watching = asyncio.create_task(watch.run())
    answered = ""
    async with httpx.AsyncClient(timeout=300) as client:
        admin = f"{base}/api/v1/admin/lines"
        if name == "slots":
            reply = await client.post(
                admin, json={"name": "wide", "upstream_kind": "pull", "max_concurrent_requests": args.slots}
            )
            answered = f"{reply.status_code} {reply.json().get('code', '')}"
            await asyncio.sleep(5)
        elif name == "tick":
            reply = await client.post(
                admin, json={"name": "fast", "upstream_kind": "pull", "position_update_sec": 1e-300}
            )
            answered = f"{reply.status_code} {reply.json().get('code', '')}"
            waiting = asyncio.create_task(
                client.post(
                    f"{base}/api/v1/lines/fast/chat", json={"query": "q"}, headers={"Accept": "text/event-stream"}
                )
            )
            await asyncio.sleep(5)
            waiting.cancel()
        elif name == "stream":
            async with client.stream("POST", f"{base}/api/v1/lines/big/chat", json={"query": "q"}) as reply:
                last = ""
                async for line in reply.aiter_lines():
                    if line.startswith("event:"):
                        last = line.removeprefix("event:").strip()
                answered = last
        elif name == "pull":
            asked = asyncio.create_task(client.post(f"{base}/api/v1/lines/gpu/chat/simple", json={"query": "q"}))
            jobs = (await client.post(f"{base}/api/v1/lines/gpu/jobs/receive", json={"wait_sec": 10})).json()["jobs"]
            receipt = jobs[0]["receipt"]
            chunk_line = json.dumps("y" * 60_000).encode() + b"\n"
            total, statuses = args.pull_mib * MIB, []
            while total > 0:  # posts of 16 MiB, as the review's worker sent them
                size = min(total, 16 * MIB)

                async def body(size: int = size) -> AsyncIterator[bytes]:
                    for _ in range(size // len(chunk_line)):
                        yield chunk_line

                try:
                    reply = await client.post(
                        f"{base}/api/v1/jobs/{receipt}/chunks",
                        content=body(),
                        headers={"Content-Type": "application/x-ndjson"},
                    )
                    statuses.append(str(reply.status_code))
                except httpx.HTTPError as exc:
                    statuses.append(type(exc).__name__)
                total -= size
            await client.post(f"{base}/api/v1/jobs/{receipt}/complete")
            guest = (await asked).json()
            answered = f"posts {','.join(sorted(set(statuses)))}; guest: {guest.get('code') or guest.get('status')}"
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    rss1 = rss_bytes(pid)
    await asyncio.sleep(10)
    watch.stop()
    await watching
    rss2, db1 = rss_bytes(pid), db_bytes(db)
    return {
        "scenario": name,
        "answered": answered,
        "rss_growth_mib": round((rss1 - rss0) / MIB, 1),
        "rss_growth_10s_later_mib": round((rss2 - rss0) / MIB, 1),
        "cpu_pct": round(100 * cpu / wall, 1),
        "worst_health_s": round(watch.worst_s, 2),
        "db_growth_mib": round((db1 - db0) / MIB, 1),
    }


async def main(args: argparse.Namespace) -> None:
    source = Path(args.source).resolve()
    mock_port = free_port()
    mock = f"http://127.0.0.1:{mock_port}"
    chunks = args.answer_mib * MIB // 65536
    with process(
        [sys.executable, str(ROOT / "tests" / "mock_upstream.py"), str(mock_port)], ROOT, {}, mock_port, "/calls"
    ):
        for name in args.only or SCENARIOS:
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "lines.toml"
                config.write_text(
                    f'[lines.guest]\nupstream_kind = "pull"\n[lines.big]\n'
                    f'upstream_url = "{mock}/upstream?chunks={chunks}&size=65536"\n'
                    'upstream_interval_sec = 0\n[lines.gpu]\nupstream_kind = "pull"\n'
                    "upstream_interval_sec = 0\n"
                )
                port, db = free_port(), Path(tmp) / "gq.db"
                env = {
                    "PYTHONPATH": str(source),
                    "GUEST_PORT": str(port),
                    "GUEST_CONFIG": str(config),
                    "GUEST_DB_PATH": str(db),
                    "GUEST_MAX_PER_CLIENT": "100",
                    "GUEST_REQUEST_TIMEOUT_SEC": "600",
                }
                argv = [sys.executable, "-m", "guestqueue", "serve"]
                with process(argv, source, env, port, "/api/v1/guest/health") as proc:
                    result = await scenario(name, f"http://127.0.0.1:{port}", proc.pid, db, args, mock)
                print(json.dumps({"source": str(source), **result}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(ROOT), help="a checkout of guestqueue to run (default: this one)")
    parser.add_argument("--slots", type=int, default=100_000)
    parser.add_argument("--answer-mib", type=int, default=160)
    parser.add_argument("--pull-mib", type=int, default=175)
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, help="these scenarios only (default: all)")
    asyncio.run(main(parser.parse_args()))
