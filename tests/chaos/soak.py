"""Scenario 1, the chaos soak: many guests against an upstream that fails in every way it
can (5xx, 503, malformed, empty, reset mid-stream, hang after the first chunk, drip one
byte at a time, silent before the first byte) while a share of guests hang up while
waiting, processing or mid-answer, some of them coming back with ``Last-Event-ID``, and
some ask the same question at once (single-flight).

Each request's upstream behaviour travels in its ``parameters.mock`` (see
tests/mock_upstream.py), so the expected ending of every guest that stays is known.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..conftest import MockUpstream, serve
from .clients import terminal_code, visit
from .oracle import (
    Guest,
    Verdict,
    check_drained,
    check_log,
    check_rss,
    check_streams,
    drained,
    read_log,
    rss_mb,
    settle_tasks,
    task_count,
    warm_up,
)
from .stalls import StallWatch

# name: (weight, mock knobs, expected (event, code) for a guest that stays)
BEHAVIOURS: dict[str, tuple[int, dict[str, Any], tuple[str, str | None]]] = {
    "ok": (36, {"chunks": 3, "delay": 0.02}, ("workflow_complete", None)),
    "fail_once": (8, {"fail": 1, "status": 500}, ("workflow_complete", None)),  # retried before any chunk
    "status_500": (8, {"mode": "status", "status": 500}, ("error", "upstream_error")),
    "status_503": (4, {"mode": "status", "status": 503}, ("error", "upstream_unavailable")),
    "malformed": (4, {"mode": "malformed"}, ("error", "upstream_error")),
    "empty": (4, {"mode": "empty"}, ("error", "upstream_error")),
    "reset": (10, {"mode": "reset", "chunks": 5}, ("error", "upstream_unavailable")),
    "hang": (10, {"mode": "hang"}, ("timeout", "timeout")),
    "drip": (10, {"mode": "drip", "chunks": 3}, ("timeout", "timeout")),
    "silent": (6, {}, ("timeout", "timeout")),  # nothing at all until after the timeout
}
SENDS_THEN_FAILS = ("reset", "hang", "drip")  # a retry after these would repeat part of an answer
TWINNABLE = ("ok", "status_500")
LEAVE_PHASES = ("queued", "processing", "answer_chunk")


@dataclass
class SoakConfig:
    requests: int = 120
    concurrency: int = 40
    duration_s: float | None = None  # stop starting new guests after this long
    workers: int = 8
    queue_size: int = 36  # a little under concurrency - workers: a few 429s
    timeout_s: float = 1.5
    retries: int = 1
    grace_s: float = 0.3
    leave_share: float = 0.25
    reconnect_share: float = 0.3  # of those who leave
    twin_share: float = 0.1
    timeout_slack_s: float = 0.5
    rss_bound_mb: float = 60.0
    seed: int = 1


def _plan(config: SoakConfig, rng: random.Random, number: int, run: str) -> list[dict[str, Any]]:
    """One or more guests (twins ask the same question together) for request ``number``."""
    names = list(BEHAVIOURS)
    behaviour = rng.choices(names, weights=[BEHAVIOURS[n][0] for n in names])[0]
    knobs = dict(BEHAVIOURS[behaviour][1])
    if behaviour == "drip":
        knobs["delay"] = config.timeout_s / 3  # one byte every third of the timeout: never done in time
    if behaviour == "silent":
        knobs["first"] = config.timeout_s + 2
    nonce = f"{run}-{number}"
    knobs["tag"] = nonce
    copies = 2 if behaviour in TWINNABLE and rng.random() < config.twin_share else 1
    plans = []
    for copy in range(copies):
        leave = rng.choice(LEAVE_PHASES) if rng.random() < config.leave_share else None
        back = leave is not None and rng.random() < config.reconnect_share
        plans.append(
            {
                "label": f"{nonce}.{copy}",
                "behaviour": behaviour,
                "nonce": nonce,
                "leave": leave,
                "back": back,
                "body": {"query": f"soak question {nonce}", "parameters": {"mock": knobs}},
            }
        )
    return plans


async def chaos_soak(upstream: MockUpstream, tmp_path: Path, config: SoakConfig | None = None) -> Verdict:
    config = config or SoakConfig()
    verdict = Verdict("chaos soak")
    rng = random.Random(config.seed)
    run = uuid.uuid4().hex[:8]
    db = tmp_path / "soak.db"
    settings: dict[str, Any] = {
        "upstream_url": upstream.url(mode="sse"),
        "max_concurrent_requests": config.workers,
        "max_queue_size": config.queue_size,
        "request_timeout_s": config.timeout_s,
        "upstream_retries": config.retries,
        "reconnect_grace_s": config.grace_s,
        "db_path": str(db),
        "cache_size": 1000,
        "ping_s": 0.5,
        "max_wait_s": 600.0,
    }
    guests: list[Guest] = []
    began = time.monotonic()
    with StallWatch() as stalls:
        async with serve(**settings) as running:
            service = running.service
            await warm_up(running)
            baseline, rss_before = task_count(), rss_mb()
            limits = httpx.Limits(max_connections=config.concurrency * 3, max_keepalive_connections=config.concurrency)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                gate = asyncio.Semaphore(config.concurrency)

                async def one(plan: dict[str, Any]) -> None:
                    async with gate:
                        guest = await visit(
                            client,
                            running.base,
                            plan["body"],
                            label=plan["label"],
                            leave_in=plan["leave"],
                            reconnect_after_s=config.grace_s / 4 if plan["back"] else None,
                        )
                        guest.meta.update(plan)
                        guests.append(guest)
                        if guest.status_code == 429:
                            await asyncio.sleep(0.2)  # a polite guest waits a little before trying again

                tasks: list[asyncio.Task[None]] = []
                for number in range(config.requests):
                    if config.duration_s is not None and time.monotonic() - began > config.duration_s:
                        break
                    while gate.locked():
                        await asyncio.sleep(0.005)
                    for plan in _plan(config, rng, number, run):
                        tasks.append(asyncio.create_task(one(plan)))
                    await asyncio.sleep(0)
                await asyncio.gather(*tasks)
            calls: dict[str, list[dict[str, Any]]] = httpx.get(f"{upstream.base}/calls", params={"prefix": run}).json()
            settled = await drained(service, config.grace_s + config.timeout_s + 5)
            verdict.check(settled, "tickets still live at the end")
            check_drained(verdict, service)
            await settle_tasks(verdict, baseline)
            check_rss(verdict, rss_before, rss_mb(), config.rss_bound_mb)
            stats = service.stats.as_dict()
    verdict.figures["seconds"] = round(time.monotonic() - began, 1)
    check_streams(verdict, guests)
    rows = check_log(verdict, guests, read_log(db))
    _check_outcomes(verdict, config, guests, rows, calls, stalls)
    verdict.figures["worst_stall_s"] = round(stalls.worst, 3)
    verdict.figures["stats"] = {k: v for k, v in stats.items() if k.endswith("requests")}
    return verdict


def _check_outcomes(
    verdict: Verdict,
    config: SoakConfig,
    guests: list[Guest],
    rows: dict[str, Any],
    calls: dict[str, list[dict[str, Any]]],
    stalls: StallWatch,
) -> None:
    overrun = 0.0
    for guest in guests:
        behaviour, nonce = guest.meta["behaviour"], guest.meta["nonce"]
        verdict.counts[f"guest_{behaviour}"] += 1
        if guest.left:
            verdict.counts[f"left_in_{guest.left}"] += 1
        if guest.reconnected:
            verdict.counts["reconnected"] += 1
        if guest.request_id is None:
            continue
        ending = terminal_code(guest)
        expected = BEHAVIOURS[behaviour][2]
        row = rows.get(guest.request_id)
        if guest.connected_to_end and ending is not None:
            verdict.counts[f"ended_{ending[0]}_{ending[1]}"] += 1
            # A guest that came back may still have been let go, if it returned after the grace.
            allowed = {expected, ("error", "disconnected")} if guest.reconnected else {expected}
            verdict.check(ending in allowed, f"{guest.label} ({behaviour}): ended {ending}, expected {expected}")
        if row is not None and row.status == "timeout" and row.processing_ms is not None:
            late = row.processing_ms / 1000 - config.timeout_s
            overrun = max(overrun, late)
            # Time the machine kept this process off the CPU after the deadline is not our lateness.
            deadline = row.started_at + config.timeout_s if row.started_at is not None else row.finished_at
            stalled = stalls.between(deadline, row.finished_at or deadline)
            verdict.check(
                late <= config.timeout_slack_s + stalled,
                f"{guest.label} ({behaviour}): timed out {late:.2f}s after the timeout ({stalled:.2f}s of it stalled)",
            )
        left_waiting = row is not None and row.error_code == "disconnected" and row.started_at is None
        if left_waiting and not _twinned(guests, nonce):
            verdict.check(not calls.get(nonce), f"{guest.label}: left while waiting, yet sent upstream")
    for nonce, made in calls.items():
        behaviour = next((g.meta["behaviour"] for g in guests if g.meta["nonce"] == nonce), "?")
        verdict.counts["upstream_calls"] += len(made)
        made = sorted(made, key=lambda call: call["t"])
        sent_before = [i for i, call in enumerate(made) if call["sent"] and i < len(made) - 1]
        verdict.check(not sent_before, f"{nonce} ({behaviour}): {len(made)} upstream calls, a retry after a chunk")
        if behaviour in SENDS_THEN_FAILS:
            verdict.check(len(made) <= 1, f"{nonce} ({behaviour}): {len(made)} upstream calls")
        verdict.check(len(made) <= config.retries + 1, f"{nonce} ({behaviour}): {len(made)} upstream calls")
    verdict.figures["max_timeout_overrun_s"] = round(overrun, 3)
    verdict.figures["outcomes"] = dict(Counter(r.status for r in rows.values()))


def _twinned(guests: list[Guest], nonce: str) -> bool:
    """A twin that stayed keeps the shared upstream call going after the other left."""
    return sum(1 for g in guests if g.meta["nonce"] == nonce) > 1
