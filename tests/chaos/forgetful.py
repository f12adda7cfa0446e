"""Scenario 8: a Redis that forgets and stalls under three instances behind nginx (issue 21).

Three guestqueue processes share one line (and a waiting room) through a real
redis-server kept in memory only; real nginx sends guests to them round-robin.
Guests are admitted one after another (admission order is known) and follow
their answers as an EventSource does. Meanwhile Redis is flushed (FLUSHALL),
restarted empty, and put to sleep for two seconds (DEBUG SLEEP 2), at a
quarter, a half and three quarters of the admissions. Beside them, visitors
join the waiting room (``max_active`` sessions, short ones) and poll until let in.

What must hold: upstream calls start in admission order and none twice; every
guest hears exactly one ending, ``workflow_complete``, with each chunk once;
no log row is left open; and at no moment more than ``max_active`` sessions
are open (each session lives from its token's issue to its ``exp``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from guestqueue.config import ENV_NAMES

from ..conftest import FAST, MockUpstream
from ..redis_server import RedisServer, run_redis
from ..support.programs import run_nginx
from .oracle import TERMINAL_EVENTS, Verdict, read_log
from .rolling import API, Instances, admit_one_by_one

CHUNKS = ["chunk0 ", "chunk1 ", "chunk2 "]
ROOM = "room"
MAX_ACTIVE, SESSION_S = 3, 2
TROUBLES = ("flush", "restart", "sleep")
SECRET = "a-token-secret-of-at-least-32-characters!"


async def forgetful_redis(upstream: MockUpstream, tmp: Path, *, guests: int, visitors: int) -> Verdict:
    verdict = Verdict("Redis flushed, restarted empty and stalled under 3 instances behind nginx")
    tag = f"forgetful-{time.monotonic_ns()}"
    db = tmp / "requests.db"
    config = tmp / "lines.toml"
    config.write_text(
        f'[lines.guest]\n[lines.{ROOM}]\nmode = "admission"\nmax_active = {MAX_ACTIVE}\nbatch_size = 10\n'
        f"process_interval_sec = 0.1\nsession_ttl_sec = {SESSION_S}\nmax_sessions_per_client = 1000\n"
    )
    # A lease of 2 s: an instance starved of CPU for a second (the suite run in parallel on two cores)
    # is not taken for dead, which would ask its running call again by design (design.md).
    settings = {
        **FAST,
        "upstream_url": upstream.url(),
        "max_concurrent_requests": 1,
        "reconnect_grace_s": 10.0,
        "instance_ttl_s": 2.0,
        "trusted_proxies": "127.0.0.1",
        "max_queue_size": guests + 10,
        "max_wait_s": 300,
        "db_path": str(db),
        "config": str(config),
        "token_secret": SECRET,
    }
    with run_redis() as redis:
        env = {ENV_NAMES[k]: str(v) for k, v in settings.items()}
        env.update({"GUEST_REDIS_URL": redis.url, "GUEST_REDIS_PREFIX": tag})
        instances = Instances(tmp, env, 3)
        bases = [f"http://127.0.0.1:{port}{API}" for port in instances.ports]
        try:
            connections = max(1024, 2 * (guests + visitors) + 256)
            with run_nginx(
                tmp, bases[0], read_timeout=None, more=tuple(bases[1:]), worker_connections=connections
            ) as proxied:
                limits = httpx.Limits(max_connections=guests + visitors + 20)
                async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                    room = proxied.removesuffix("/guest") + f"/lines/{ROOM}"
                    visits = asyncio.gather(*(_visit(client, room) for _ in range(visitors)))
                    results = await _load(client, proxied, redis, guests, tag, verdict)
                    visited = await visits
        finally:
            instances.stop()
    _judge(verdict, results, await upstream.acalls(tag), db)
    _judge_sessions(verdict, visited)
    return verdict


async def _load(
    client: httpx.AsyncClient, base: str, redis: RedisServer, guests: int, tag: str, verdict: Verdict
) -> list[list[Any]]:
    body = {"query": "", "parameters": {"mock": {"tag": tag, "chunks": len(CHUNKS), "delay": 0.02}}}

    async def make_trouble(quarter: int) -> None:
        kind = TROUBLES[quarter - 1]
        await trouble(redis, kind)
        verdict.counts[kind] += 1

    return await admit_one_by_one(client, base, body, guests, verdict, at_quarters=make_trouble)


async def trouble(redis: RedisServer, kind: str) -> None:
    """Make Redis forget (``flush``, ``restart`` without persistence) or stall (``sleep``: 2 s)."""
    if kind == "restart":
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(redis.start)
        return
    client = aioredis.from_url(redis.url)
    try:
        if kind == "flush":
            await client.flushall()
        else:
            await client.execute_command("DEBUG", "SLEEP", "2")  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


async def _visit(client: httpx.AsyncClient, room: str) -> tuple[float, float] | str:
    """Join the waiting room and poll (through nginx, any instance; once a second, under the
    repo's nginx.conf rate limit) until let in: the session's (issued, expires), or what the
    visitor heard instead."""
    request_id = ""
    for _attempt in range(300):
        try:
            if not request_id:
                reply = await client.post(f"{room}/join")
                if reply.status_code == 202:
                    request_id = reply.json()["request_id"]
            else:
                reply = await client.get(f"{room}/join/{request_id}")
                state = reply.json() if reply.status_code == 200 else {}
                if state.get("status") == "admitted":
                    expires = float(state["expires_at"])
                    return expires - SESSION_S, expires
                if state.get("status") not in (None, "queued", "processing"):
                    return f"{request_id}: {state}"  # turned away
        except httpx.HTTPError:
            pass
        await asyncio.sleep(1.0)
    return f"{request_id or 'no request'}: still waiting after 300 polls"


def _judge(verdict: Verdict, results: list[list[Any]], calls: list[dict[str, Any]], db: Path) -> None:
    for n, events in enumerate(results):
        endings = [e for e in events if e.name in TERMINAL_EVENTS]
        verdict.check(
            [e.name for e in endings] == ["workflow_complete"], f"guest {n}: endings {[e.name for e in endings]}"
        )
        chunks = [e.data for e in events if e.name == "answer_chunk"]
        verdict.check(chunks == CHUNKS, f"guest {n}: chunks {chunks} (events {[(e.id, e.name) for e in events]})")
        verdict.counts["reconnected"] += any(e.name == "reconnect" for e in events)
    queries = [c["body"]["query"] for c in sorted(calls, key=lambda c: c["t"])]
    verdict.counts["upstream_calls"] = len(calls)
    duplicates = [q for q, count in Counter(queries).items() if count > 1]
    verdict.check(not duplicates, f"asked twice: {duplicates[:5]}")
    out_of_order = [(a, b) for a, b in itertools.pairwise(queries) if a > b]  # one slot: exact order
    verdict.check(not out_of_order, f"started out of admission order: {out_of_order[:5]}")
    rows = read_log(db)
    open_rows = [r for r in rows if r.status in ("queued", "processing")]
    verdict.check(not open_rows, f"{len(open_rows)} log rows left open")
    verdict.figures.update(guests=len(results), calls=len(calls), rows=len(rows))


def _judge_sessions(verdict: Verdict, visited: list[tuple[float, float] | str]) -> None:
    sessions = [v for v in visited if isinstance(v, tuple)]
    turned_away = [v for v in visited if isinstance(v, str)]
    verdict.check(not turned_away, f"{len(turned_away)} visitors never let in: {turned_away[:3]}")
    # A session holds its slot from its issue to its exp (or later: the sweep frees it): the most
    # open at once, over every moment a session began.
    most = max((sum(1 for b, e in sessions if b <= start < e) for start, _ in sessions), default=0)
    verdict.check(most <= MAX_ACTIVE, f"{most} sessions open at once (max_active {MAX_ACTIVE})")
    verdict.figures.update(sessions=len(sessions), most_open_at_once=most)
