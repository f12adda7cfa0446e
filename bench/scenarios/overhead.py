"""Scenario 1, overhead: an empty line, pacing off, many slots, a 20-chunk upstream.

Streams per second with ``--concurrency`` streams in flight, and time to first
chunk unloaded (one stream at a time), for the direct upstream, the bare relay
(default httpx transport, and the same relay on httpx-aiohttp) and guestqueue.
Servers take turns, round after round, so background noise hits them alike.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from typing import Any

from .. import servers
from ..procs import Server
from ..report import Result, Table
from ..stats import spread

# guestqueue-openai: the same guestqueue server, asked through its OpenAI front door (/v1/chat/completions).
KINDS = ("direct", "relay", "relay-aiohttp", "guestqueue", "guestqueue-openai")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each server once per round")
    parser.add_argument("--duration-s", type=float, default=5.0, help="throughput window per server per round")
    parser.add_argument("--concurrency", type=int, default=32, help="streams in flight for throughput")
    parser.add_argument("--ttfc-count", type=int, default=200, help="sequential streams for time to first chunk")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--servers", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS))
    parser.add_argument("--guestqueue-flags", default="", help="extra `guestqueue serve` flags, e.g. --db-path x.db")
    parser.add_argument("--mock", choices=["starlette", "raw"], default="starlette", help="the upstream's build")


def smoke(args: argparse.Namespace) -> None:
    args.rounds, args.duration_s, args.concurrency, args.ttfc_count = 1, 0.5, 4, 10
    args.servers = "direct,relay,guestqueue,guestqueue-openai"


def run(args: argparse.Namespace) -> Result:
    kinds = [k for k in args.servers.split(",") if k]
    names = ("rounds", "duration_s", "concurrency", "ttfc_count", "chunks", "servers", "mock", "guestqueue_flags")
    result = Result("overhead", {k: getattr(args, k) for k in names})
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with ExitStack() as stack:
        mock = stack.enter_context(servers.mock(args.mock))
        url = f"{mock.base}/chat?chunks={args.chunks}"
        started: dict[str, Server | None] = {"direct": None}
        slots = max(args.concurrency * 2, 64)
        if "relay" in kinds:
            started["relay"] = stack.enter_context(servers.relay(url, concurrency=slots))
        if "relay-aiohttp" in kinds:
            started["relay-aiohttp"] = stack.enter_context(servers.relay(url, concurrency=slots, transport="aiohttp"))
        if "guestqueue" in kinds or "guestqueue-openai" in kinds:
            started["guestqueue"] = stack.enter_context(
                servers.guestqueue(
                    url, concurrency=slots, queue_size=10_000, interval_s=0.0, extra=args.guestqueue_flags.split()
                )
            )
            started["guestqueue-openai"] = started["guestqueue"]
        for round_no in range(args.rounds):
            order = kinds[round_no % len(kinds) :] + kinds[: round_no % len(kinds)]
            for kind in order:
                server = started[kind]
                target = (
                    {"kind": "direct", "url": url}
                    if server is None
                    else {"kind": kind if kind == "guestqueue-openai" else servers.kind_of(server), "url": server.base}
                )
                measured = server or mock  # for "direct", the upstream is the server
                measured.mark()
                load = servers.drive(
                    {**target, "mode": "streams", "concurrency": args.concurrency, "duration_s": args.duration_s}
                )
                cpu = measured.usage()
                ttfc = servers.drive({**target, "mode": "streams", "concurrency": 1, "count": args.ttfc_count})
                runs[kind].append({"round": round_no, "throughput": load, "server_cpu_pct": cpu.cpu_pct, "ttfc": ttfc})
    result.raw["runs"] = runs
    _tabulate(result, kinds, runs)
    return result


def _tabulate(result: Result, kinds: list[str], runs: dict[str, list[dict[str, Any]]]) -> None:
    table = Table(
        "overhead: streams/s (median [min-max] over rounds), time to first chunk unloaded",
        [
            "server",
            "streams/s",
            "range",
            "x direct",
            "x relay",
            "server CPU %",
            "ttfc p50 ms",
            "ttfc p99 ms",
            "+ttfc vs direct ms",
            "errors",
        ],
    )
    med: dict[str, dict[str, float]] = {}
    for kind in kinds:
        rows = runs[kind]
        rate = spread([r["throughput"]["streams_per_s"] for r in rows])
        ttfc50 = spread([r["ttfc"]["ttfc_ms"].get("p50", float("nan")) for r in rows])
        ttfc99 = spread([r["ttfc"]["ttfc_ms"].get("p99", float("nan")) for r in rows])
        cpu = spread([r["server_cpu_pct"] for r in rows])
        errors = sum(r["throughput"]["errors"] + r["ttfc"]["errors"] for r in rows)
        med[kind] = {
            "rate": rate["median"],
            "ttfc": ttfc50["median"],
            "ttfc99": ttfc99["median"],
            "cpu": cpu["median"],
            "min": rate["min"],
            "max": rate["max"],
            "errors": errors,
        }
    for kind in kinds:
        m = med[kind]
        vs_direct = m["rate"] / med["direct"]["rate"] if "direct" in med else float("nan")
        vs_relay = m["rate"] / med["relay"]["rate"] if "relay" in med else float("nan")
        extra = m["ttfc"] - med["direct"]["ttfc"] if "direct" in med else float("nan")
        table.add(
            kind,
            m["rate"],
            f"{m['min']:.0f}-{m['max']:.0f}",
            vs_direct,
            vs_relay,
            m["cpu"],
            m["ttfc"],
            m["ttfc99"],
            extra,
            int(m["errors"]),
        )
    result.tables.append(table)
    if "guestqueue" in med and "direct" in med:
        ratio = med["guestqueue"]["rate"] / med["direct"]["rate"]
        result.target("throughput ≥ 0.45 x direct", round(ratio, 3), "≥ 0.45", ratio >= 0.45)
    if "guestqueue" in med and "guestqueue-openai" in med:
        front = Table(
            "the OpenAI front door against /chat, the same server (medians over rounds)",
            ["streams/s via /chat", "streams/s via /v1/chat/completions", "ratio"],
        )
        front.add(
            med["guestqueue"]["rate"],
            med["guestqueue-openai"]["rate"],
            med["guestqueue-openai"]["rate"] / med["guestqueue"]["rate"],
        )
        result.tables.append(front)
        extra = med["guestqueue"]["ttfc"] - med["direct"]["ttfc"]
        result.target("ttfc p50 - direct (ms)", round(extra, 3), "≤ 0.6", extra <= 0.6)
    if "guestqueue" in med and "relay" in med:
        ratio = med["guestqueue"]["rate"] / med["relay"]["rate"]
        result.target("throughput x bare httpx relay", round(ratio, 2), "≥ 3 (implied)", ratio >= 3)
