"""Scenario 2, waiting guests: N guests wait behind one slow request, hearing their place at 1 Hz.

For each N and server (fresh process each time, servers alternating): server
CPU over the measurement window, RSS growth per connected guest against the
idle server, updates delivered, and how late each update came against its due
time (previous update + 1 s). Gradio is set to broadcast estimations at
1 Hz too (``status_update_rate=1``), so both deliver the same updates.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .. import servers
from ..procs import Server
from ..report import Result, Table
from ..stats import spread

KINDS = ("guestqueue", "gradio")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--counts", default="1000,5000,10000", help="comma-separated numbers of waiting guests")
    parser.add_argument("--servers", default=",".join(KINDS))
    parser.add_argument("--gradio-max", type=int, default=10_000, help="skip Gradio above this many guests")
    parser.add_argument("--settle-s", type=float, default=5.0, help="after every guest connected, before measuring")
    parser.add_argument("--measure-s", type=float, default=20.0)
    parser.add_argument("--ramp-per-s", type=float, default=1000.0, help="new guests per second")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--guestqueue-flags", default="", help="extra `guestqueue serve` flags, space-separated")


def smoke(args: argparse.Namespace) -> None:
    args.counts, args.servers, args.settle_s, args.measure_s, args.repeat = "20", "guestqueue", 0.5, 2.5, 1


def run(args: argparse.Namespace) -> Result:
    counts = [int(c) for c in args.counts.split(",") if c]
    kinds = [k for k in args.servers.split(",") if k]
    result = Result(
        "waiting",
        {
            k: getattr(args, k)
            for k in (
                "counts",
                "servers",
                "settle_s",
                "measure_s",
                "ramp_per_s",
                "repeat",
                "guestqueue_flags",
                "gradio_max",
            )
        },
    )
    runs: list[dict[str, Any]] = []
    with servers.mock() as mock:
        url = f"{mock.base}/chat?chunks=20"
        for rep in range(args.repeat):
            for count in counts:
                order = kinds if (rep + counts.index(count)) % 2 == 0 else kinds[::-1]
                for kind in order:
                    if kind == "gradio" and count > args.gradio_max:
                        continue
                    runs.append(_one(kind, count, url, args))
    result.raw["runs"] = runs
    _tabulate(result, kinds, counts, runs)
    return result


def _server(kind: str, url: str, count: int, args: argparse.Namespace) -> Server:
    if kind == "gradio":
        return servers.gradio(url, concurrency=1)
    return servers.guestqueue(url, concurrency=1, queue_size=count + 10, extra=args.guestqueue_flags.split())


def _one(kind: str, count: int, url: str, args: argparse.Namespace) -> dict[str, Any]:
    with _server(kind, url, count, args) as server:
        time.sleep(1.0)
        rss_idle = server.rss()
        seen: dict[str, Any] = {}

        def on_phase(phase: str) -> None:
            if phase == "measure":
                seen["rss"] = server.rss()
                server.mark()
            elif phase == "measured":
                seen["usage"] = server.usage()
                seen["rss_end"] = server.rss()

        load = servers.drive(
            {
                "kind": servers.kind_of(server),
                "url": server.base,
                "mode": "waiters",
                "count": count,
                "interval_s": 1.0,
                "settle_s": args.settle_s,
                "measure_s": args.measure_s,
                "ramp_per_s": args.ramp_per_s,
                "connect_timeout_s": 30 + count / args.ramp_per_s * 3,
            },
            on_phase,
        )
    usage = seen["usage"]
    rss = max(seen["rss"], seen["rss_end"])
    updates = load["updates"]
    return {
        "server": kind,
        "guests": count,
        "cpu_pct": usage.cpu_pct,
        "cpu_s": usage.cpu_s,
        "rss_idle_mb": rss_idle / 2**20,
        "rss_mb": rss / 2**20,
        "rss_per_guest_kb": (rss - rss_idle) / max(1, load["connected"]) / 1024,
        "cpu_us_per_update": usage.cpu_s / updates * 1e6 if updates else float("nan"),
        "load": load,
    }


def _tabulate(result: Result, kinds: list[str], counts: list[int], runs: list[dict[str, Any]]) -> None:
    table = Table(
        "waiting guests: server CPU (% of one core), RSS, update lateness (medians over repeats)",
        [
            "server",
            "guests",
            "connected",
            "CPU %",
            "RSS MB",
            "KB/guest",
            "updates/s",
            "µs CPU/update",
            "delay p50 ms",
            "delay p99 ms",
            "within 1 s %",
        ],
    )
    medians: dict[tuple[str, int], dict[str, float]] = {}
    for kind in kinds:
        for count in counts:
            rows = [r for r in runs if r["server"] == kind and r["guests"] == count]
            if not rows:
                continue

            def med(get: Any, rows: list[dict[str, Any]] = rows) -> float:
                return float(spread([get(r) for r in rows])["median"])

            m = {
                "cpu": med(lambda r: r["cpu_pct"]),
                "rss": med(lambda r: r["rss_mb"]),
                "kb": med(lambda r: r["rss_per_guest_kb"]),
                "ups": med(lambda r: r["load"]["updates_per_s"]),
                "us": med(lambda r: r["cpu_us_per_update"]),
                "p50": med(lambda r: r["load"]["delay_ms"].get("p50", float("nan"))),
                "p99": med(lambda r: r["load"]["delay_ms"].get("p99", float("nan"))),
                "within": med(lambda r: r["load"]["within_1s"] * 100),
                "connected": med(lambda r: r["load"]["connected"]),
            }
            medians[(kind, count)] = m
            table.add(
                kind,
                count,
                int(m["connected"]),
                m["cpu"],
                m["rss"],
                m["kb"],
                m["ups"],
                m["us"],
                m["p50"],
                m["p99"],
                m["within"],
            )
    result.tables.append(table)
    top = max(counts)
    gq = medians.get(("guestqueue", top))
    if gq is not None and top >= 10_000:
        result.target(f"CPU % of one core at {top}", round(gq["cpu"], 1), "≤ 35", gq["cpu"] <= 35)
        result.target(f"update delay p99 ms at {top}", round(gq["p99"], 1), "≤ 500", gq["p99"] <= 500)
        result.target(f"updates within 1 s % at {top}", round(gq["within"], 3), "≥ 99.9", gq["within"] >= 99.9)
        result.target(f"RSS KB per guest at {top}", round(gq["kb"], 1), "≤ 30", gq["kb"] <= 30)
    gq1, gr1 = medians.get(("guestqueue", 1000)), medians.get(("gradio", 1000))
    if gq1 is not None and gr1 is not None:
        ratio = gr1["us"] / gq1["us"]
        result.target("Gradio ÷ guestqueue CPU per update at 1000", round(ratio, 2), "≥ 5", ratio >= 5)
