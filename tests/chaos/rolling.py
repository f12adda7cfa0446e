"""Scenario 7: several instances behind nginx, restarted in turn under load (SIGTERM), one killed.

Three guestqueue processes share one line through a real redis-server and one
request log file; real nginx sends guests to them round-robin. Guests are
admitted one after another (so admission order is known), each following its
answer the way an EventSource does: on a ``reconnect`` event or a dropped
stream it asks again with ``Last-Event-ID``, through nginx, and lands on
whichever instance is up. Meanwhile every instance is restarted in turn with
SIGTERM, and one of them is killed with SIGKILL and started again.

What must hold: upstream calls start in admission order (for every guest
whose call was not cut by the kill), no question is answered twice, every
guest hears exactly one ending, and no log row is left open.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from guestqueue.config import ENV_NAMES

from ..conftest import FAST, MockUpstream, env_without_guest_vars, free_port, wait_for_http
from ..redis_server import run_redis
from ..support.programs import run_nginx
from .oracle import TERMINAL_EVENTS, SSEParser, Verdict, read_log

API = "/api/v1/guest"


class Instances:
    """guestqueue processes on fixed ports (a restarted one comes back where nginx expects it)."""

    def __init__(self, tmp: Path, env: dict[str, str], count: int) -> None:
        self.tmp, self.env = tmp, env
        self.ports = [free_port() for _ in range(count)]
        self.procs = {port: self.start(port) for port in self.ports}

    def start(self, port: int) -> subprocess.Popen[bytes]:
        with (self.tmp / f"guestqueue-{port}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "guestqueue", "serve"],
                env={**env_without_guest_vars(), **self.env, "GUEST_PORT": str(port)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_http(f"http://127.0.0.1:{port}{API}/health", timeout_s=30)
        return proc

    async def restart(self, port: int, *, kill: bool = False) -> int:
        """SIGTERM (or SIGKILL) one instance and start it again; its exit code."""
        proc = self.procs[port]
        proc.kill() if kill else proc.terminate()
        code = await asyncio.to_thread(proc.wait, 60)
        self.procs[port] = await asyncio.to_thread(self.start, port)
        return code

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def follow(client: httpx.AsyncClient, base: str, body: dict[str, Any], admitted: asyncio.Event) -> list[Any]:
    """Ask through ``base`` and follow the answer to its end, across instances (as an EventSource
    does); ``admitted`` is set once the first event arrived."""
    events: list[Any] = []
    last_id = ""
    request_id = ""
    for _attempt in range(60):
        parser = SSEParser()
        if request_id:
            request = client.build_request(
                "GET", f"{base}/chat/{request_id}/events", headers={"Last-Event-ID": last_id}
            )
        else:
            # Its own Idempotency-Key, as a client that may ask again must send: a POST whose
            # answer was cut before its first event (its instance stopping) was admitted all the
            # same, and asking again without the key is a second question (a second answer).
            key = {"Idempotency-Key": f"guest-{body['query']}"}
            request = client.build_request("POST", f"{base}/chat", json=body, headers=key)
        try:
            response = await client.send(request, stream=True)
            try:
                if response.status_code == 200:
                    async for text in response.aiter_text():
                        for event in parser.feed(text):
                            events.append(event)
                            if event.id:
                                last_id = event.id
                            if not request_id and isinstance(event.data, dict):
                                request_id = str(event.data.get("request_id", ""))
                                admitted.set()
            finally:
                await response.aclose()
        except httpx.HTTPError:
            pass
        if events and events[-1].name in TERMINAL_EVENTS:
            return events
        await asyncio.sleep(0.3)
    return events


async def rolling_restart(upstream: MockUpstream, tmp: Path, *, guests: int, kill: bool = True) -> Verdict:
    verdict = Verdict("rolling restart of 3 instances behind nginx")
    tag = f"rolling-{time.monotonic_ns()}"
    db = tmp / "requests.db"
    # One slot and calls of ~0.1 s: the line grows while guests keep coming, so every restart
    # finds guests waiting.
    settings = {
        **FAST,
        "upstream_url": upstream.url(),
        "max_concurrent_requests": 1,
        "reconnect_grace_s": 10.0,
        "shutdown_grace_s": 3.0,
        "instance_ttl_s": 1.0,
        "trusted_proxies": "127.0.0.1",
        "max_queue_size": guests + 10,
        "db_path": str(db),
    }
    with run_redis() as redis:
        env = {ENV_NAMES[k]: str(v) for k, v in settings.items()}
        env.update({"GUEST_REDIS_URL": redis.url, "GUEST_REDIS_PREFIX": tag})
        instances = Instances(tmp, env, 3)
        bases = [f"http://127.0.0.1:{port}{API}" for port in instances.ports]
        try:
            # Each guest is two connections in nginx (to it, and on to an instance).
            connections = max(1024, 2 * guests + 256)
            with run_nginx(
                tmp, bases[0], read_timeout=None, more=tuple(bases[1:]), worker_connections=connections
            ) as proxied:
                limits = httpx.Limits(max_connections=guests + 20)
                async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                    results = await _load(client, proxied, instances, guests, tag, kill, verdict)
        finally:
            instances.stop()
    _judge(verdict, results, await upstream.acalls(tag), db)
    return verdict


async def _load(
    client: httpx.AsyncClient, base: str, instances: Instances, guests: int, tag: str, kill: bool, verdict: Verdict
) -> list[list[Any]]:
    body = {"query": "", "parameters": {"mock": {"tag": tag, "chunks": 3, "delay": 0.05}}}

    async def restart(quarter: int) -> None:
        # Each instance in turn, while the line is long (the second one killed instead of stopped).
        port, killed = instances.ports[quarter - 1], kill and quarter == 2
        code = await instances.restart(port, kill=killed)
        if not killed:
            verdict.check(code == 0, f"instance on {port} exited {code} after SIGTERM")
        verdict.counts["restarts"] += 1

    return await admit_one_by_one(client, base, body, guests, verdict, at_quarters=restart)


ENDINGS_WITHIN_S = 120.0  # after the last admission; the scenarios' lines drain in seconds


async def admit_one_by_one(
    client: httpx.AsyncClient,
    base: str,
    body: dict[str, Any],
    guests: int,
    verdict: Verdict,
    *,
    at_quarters: Callable[[int], Awaitable[None]],
) -> list[list[Any]]:
    """Guests admitted one after another through ``base`` (so admission order is launch order), each
    following its answer; ``at_quarters(n)`` runs once a quarter, a half and three quarters of them
    were admitted (n = 1, 2, 3). Every guest's events, in launch order."""
    admitted_so_far = 0

    async def at_each_quarter() -> None:
        for quarter in (1, 2, 3):
            while admitted_so_far < guests * quarter // 4:
                await asyncio.sleep(0.05)
            await at_quarters(quarter)

    meanwhile = asyncio.create_task(at_each_quarter())
    tasks = []
    for n in range(guests):
        admitted = asyncio.Event()
        tasks.append(asyncio.create_task(follow(client, base, {**body, "query": f"g{n:05d}"}, admitted)))
        try:
            await asyncio.wait_for(admitted.wait(), 30)
        except TimeoutError:
            verdict.violations.append(f"guest {n} was never admitted")
        admitted_so_far += 1
    await meanwhile
    # A watchdog: a guest whose request never ends must fail the scenario, not hang it (a flight
    # whose slot was freed but whose ending never reached Redis once left its guest waiting).
    done, pending = await asyncio.wait(tasks, timeout=ENDINGS_WITHIN_S)
    for n, task in enumerate(tasks):
        if task in pending:
            task.cancel()
            verdict.violations.append(f"guest {n} heard no ending within {ENDINGS_WITHIN_S:g} s of the last admission")
    await asyncio.gather(*pending, return_exceptions=True)
    return [task.result() if task in done else [] for task in tasks]


CHUNKS = ["chunk0 ", "chunk1 ", "chunk2 "]  # the mock upstream's answer to the body below (chunks: 3)


def _judge(verdict: Verdict, results: list[list[Any]], calls: list[dict[str, Any]], db: Path) -> None:
    for n, events in enumerate(results):
        endings = [e for e in events if e.name in TERMINAL_EVENTS]
        verdict.check(len(endings) == 1, f"guest {n}: {len(endings)} endings")
        verdict.counts["reconnected"] += any(e.name == "reconnect" for e in events)
        if endings:
            verdict.counts[f"ending_{endings[0].name}"] += 1
        if endings and endings[0].name == "workflow_complete":
            chunks = [e.data for e in events if e.name == "answer_chunk"]
            verdict.check(chunks == CHUNKS, f"guest {n}: chunks {chunks}")  # each once: no second answer heard
    # A call the kill cut before it finished is not an answer, even if the upstream had written a
    # chunk: the killed instance may not have read it, and then no guest heard it and the call is
    # asked again by design (design.md). Two calls that both finished are a question answered twice.
    answered = [c for c in calls if c.get("finished")]
    queries = [c["body"]["query"] for c in sorted(answered, key=lambda c: c["t"])]
    verdict.counts["upstream_calls"] = len(calls)
    duplicates = [q for q, count in Counter(queries).items() if count > 1]
    verdict.check(not duplicates, f"answered twice: {duplicates[:5]}")
    out_of_order = [(a, b) for a, b in itertools.pairwise(queries) if a > b]  # one slot: exact order
    verdict.check(not out_of_order, f"started out of admission order: {out_of_order[:5]}")
    rows = read_log(db)
    open_rows = [r for r in rows if r.status in ("queued", "processing")]
    verdict.check(not open_rows, f"{len(open_rows)} log rows left open")
    verdict.figures.update(
        guests=len(results), calls=len(calls), rows=len(rows), reconnected=verdict.counts["reconnected"]
    )
