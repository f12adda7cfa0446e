"""Scenario 4, dispatch and pacing, timed at the mock upstream itself.

Dispatch (pacing off, one slot, a burst of guests): the gap between one
upstream call's last byte and the next call's arrival, i.e. how long a freed
slot stays idle while guests wait. Pacing (``--interval-s``, several slots so
only pacing holds guests back, ``--paced`` guests at once): the gaps between
consecutive upstream starts, against the interval. The mock records both
with ``time.monotonic()``.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import httpx

from .. import servers
from ..procs import Server
from ..report import Result, Table
from ..stats import summary

KINDS = ("guestqueue", "relay", "gradio")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=200, help="guests per dispatch burst")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default=",".join(KINDS))
    parser.add_argument("--interval-s", type=float, default=0.25, help="pacing interval")
    parser.add_argument("--paced", type=int, default=100, help="guests waiting on pacing")
    parser.add_argument("--skip", type=int, default=5, help="first gaps not scored (the burst still arriving)")


def smoke(args: argparse.Namespace) -> None:
    args.count, args.rounds, args.servers = 20, 1, "guestqueue,relay"
    args.interval_s, args.paced, args.skip = 0.05, 8, 2


def _calls(mock: Server) -> list[tuple[float, float]]:
    calls = [tuple(c) for c in httpx.get(mock.base + "/calls", timeout=10).json()]
    return sorted((float(c[0]), float(c[1])) for c in calls)


def _server(kind: str, url: str, count: int, interval_s: float = 0.0, concurrency: int = 1) -> Server:
    if kind == "relay":
        return servers.relay(url, concurrency=concurrency)
    if kind == "gradio":
        return servers.gradio(url, concurrency=concurrency)
    return servers.guestqueue(url, concurrency=concurrency, queue_size=count + 10, interval_s=interval_s)


def run(args: argparse.Namespace) -> Result:
    kinds = [k for k in args.servers.split(",") if k]
    result = Result(
        "dispatch", {k: getattr(args, k) for k in ("count", "rounds", "servers", "interval_s", "paced", "skip")}
    )
    gaps: dict[str, list[float]] = {k: [] for k in kinds}
    errors: dict[str, int] = {k: 0 for k in kinds}
    paced: list[float] = []
    with servers.mock() as mock:
        url = f"{mock.base}/chat?chunks=3&first=0.002&record=1"
        for kind in kinds:
            with _server(kind, url, args.count) as server:
                for _ in range(args.rounds):
                    _calls(mock)  # start clean
                    load = servers.drive(
                        {
                            "kind": servers.kind_of(server),
                            "url": server.base,
                            "mode": "streams",
                            "concurrency": args.count,
                            "count": args.count,
                        }
                    )
                    errors[kind] += load["errors"]
                    calls = _calls(mock)
                    gaps[kind] += [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(calls)][args.skip :]
        if "guestqueue" in kinds:
            with _server("guestqueue", url, args.paced, args.interval_s, concurrency=4) as server:
                _calls(mock)
                load = servers.drive(
                    {
                        "kind": "guestqueue",
                        "url": server.base,
                        "mode": "streams",
                        "concurrency": args.paced,
                        "count": args.paced,
                    }
                )
                errors["guestqueue"] += load["errors"]
                starts = [c[0] for c in _calls(mock)]
                paced = [(b - a - args.interval_s) * 1000 for a, b in itertools.pairwise(starts)]
    result.raw.update(gaps_ms=gaps, paced_excess_ms=paced, errors=errors)
    _tabulate(result, args, gaps, paced, errors)
    return result


def _tabulate(
    result: Result, args: argparse.Namespace, gaps: dict[str, list[float]], paced: list[float], errors: dict[str, int]
) -> None:
    table = Table(
        "dispatch, pacing off, 1 slot: upstream idle between calls while guests wait (ms)",
        ["server", "gaps", "p50", "p90", "p99", "max", "errors"],
    )
    stats: dict[str, dict[str, Any]] = {}
    for kind, values in gaps.items():
        stats[kind] = s = summary(values)
        table.add(kind, s["n"], s.get("p50"), s.get("p90"), s.get("p99"), s.get("max"), errors[kind])
    result.tables.append(table)
    if paced:
        p = summary(paced)
        pacing = Table(
            f"pacing on (interval {args.interval_s * 1000:.0f} ms, {args.paced} guests at once, 4 slots): "
            "start-to-start gap minus the interval (ms)",
            ["server", "gaps", "p50", "p99", "max", "min"],
        )
        pacing.add("guestqueue", p["n"], p["p50"], p["p99"], p["max"], min(paced))
        result.tables.append(pacing)
        result.target("pacing gap - interval, max ms", round(p["max"], 2), "≤ +50", p["max"] <= 50)
    if "guestqueue" in stats and stats["guestqueue"]["n"]:
        p50 = stats["guestqueue"]["p50"]
        result.target("slot free → next upstream start, p50 ms", round(p50, 3), "≤ 2", p50 <= 2)
