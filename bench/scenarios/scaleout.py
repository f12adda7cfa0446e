"""Scenario 7, scale-out: one in-memory process against 1, 2 and 3 processes sharing a line in Redis.

Waiting guests (one blocker holds the only slot, the rest wait and hear their
place at 1 Hz): the guests are split evenly over the instances and each
instance gets its own load-driver process, connected to it directly (through
nginx every guest would cost nginx two descriptors, and one process may open
20 000). CPU is every guestqueue process plus redis-server, over the
measurement window, per delivered update. Redis commands per second come from
``INFO commandstats`` over the same window.

Dispatch and pacing across instances (three Redis-backed instances, guests
spread over them): the mock upstream records each call's start and end; a
freed slot's idle time is the next call's start minus the previous call's
end; pacing gaps are start-to-start minus the interval.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx

from .. import servers
from ..procs import Server, cpu_seconds, free_port
from ..report import Result, Table
from ..stats import summary

CONFIGS = ("memory-1", "redis-1", "redis-2", "redis-3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--counts", default="3000,6000", help="comma-separated totals of waiting guests")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--measure-s", type=float, default=20.0)
    parser.add_argument("--ramp-per-s", type=float, default=1000.0, help="new guests per second, per instance")
    parser.add_argument("--dispatch", type=int, default=150, help="guests in the dispatch burst")
    parser.add_argument("--interval-s", type=float, default=0.1, help="pacing interval")
    parser.add_argument("--dispatch-instances", type=int, default=3, help="instances in the dispatch and pacing runs")
    parser.add_argument("--paced", type=int, default=40, help="guests waiting on pacing")
    parser.add_argument(
        "--max-per-process",
        type=int,
        default=15_000,
        help="skip a config that would put more guests on one process (20 000 open files each)",
    )


def smoke(args: argparse.Namespace) -> None:
    args.counts, args.configs, args.settle_s, args.measure_s = "30", "redis-2", 0.5, 2.0
    args.dispatch, args.paced, args.interval_s, args.dispatch_instances = 16, 8, 0.05, 2


class Redis:
    """redis-server on a free port, no persistence: its pid (for CPU) and INFO (for commands)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "10000",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while self.calls() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def calls(self) -> int | None:
        """Commands Redis has run so far (the sum of ``INFO commandstats``), None if it is not up."""
        try:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.port), "INFO", "commandstats"], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        if "cmdstat_" not in out and "Commandstats" not in out:
            return None
        return sum(
            int(part.split("=")[1])
            for line in out.splitlines()
            if line.startswith("cmdstat_")
            for part in line.split(":", 1)[1].split(",")
            if part.startswith("calls=")
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _instances(
    stack: ExitStack,
    url: str,
    count: int,
    redis: Redis | None,
    prefix: str,
    queue_size: int,
    interval_s: float = 0.0,
    concurrency: int = 1,
) -> list[Server]:
    extra = ["--redis-url", redis.url, "--redis-prefix", prefix] if redis is not None else []
    return [
        stack.enter_context(
            servers.guestqueue(url, concurrency=concurrency, queue_size=queue_size, interval_s=interval_s, extra=extra)
        )
        for _ in range(count)
    ]


def _drive_all(jobs: list[dict[str, Any]], on_measure: Any, on_measured: Any) -> list[dict[str, Any]]:
    """One driver process per job, all at once; the CPU window opens at the first `measure` and
    closes at the last `measured`."""
    state = {"measuring": 0, "measured": 0}

    def phase(name: str) -> None:
        if name == "measure":
            state["measuring"] += 1
            if state["measuring"] == 1:
                on_measure()
        elif name == "measured":
            state["measured"] += 1
            if state["measured"] == len(jobs):
                on_measured()

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: servers.drive(job, phase), jobs))


def _waiting(config: str, total: int, url: str, args: argparse.Namespace) -> dict[str, Any]:
    kind, n = config.split("-")
    processes = int(n)
    with ExitStack() as stack:
        redis = Redis() if kind == "redis" else None
        if redis is not None:
            stack.callback(redis.stop)
        prefix = f"bench-{config}-{total}"
        instances = _instances(stack, url, processes, redis, prefix, queue_size=total + 10)
        time.sleep(1.0)
        pids = [s.pid for s in instances] + ([redis.proc.pid] if redis is not None else [])
        window: dict[str, float] = {}

        def opened() -> None:
            window.update(
                t0=time.monotonic(),
                cpu0=sum(cpu_seconds(p) for p in pids),
                redis_cpu0=cpu_seconds(redis.proc.pid) if redis else 0.0,
                calls0=float(redis.calls() or 0) if redis else 0.0,
            )

        def closed() -> None:
            window.update(
                t1=time.monotonic(),
                cpu1=sum(cpu_seconds(p) for p in pids),
                redis_cpu1=cpu_seconds(redis.proc.pid) if redis else 0.0,
                calls1=float(redis.calls() or 0) if redis else 0.0,
            )

        share = total // processes
        jobs = [
            {
                "kind": "guestqueue",
                "url": s.base,
                "mode": "waiters",
                "count": share,
                "interval_s": 1.0,
                "settle_s": args.settle_s,
                "measure_s": args.measure_s,
                "ramp_per_s": args.ramp_per_s,
                "connect_timeout_s": 30 + share / args.ramp_per_s * 3,
            }
            for s in instances
        ]
        loads = _drive_all(jobs, opened, closed)
    wall = window["t1"] - window["t0"]
    updates = sum(load["updates"] for load in loads)
    delays = {k: max(load["delay_ms"].get(k, 0.0) for load in loads) for k in ("p50", "p99")}
    within = sum(load["within_1s"] * load["updates"] for load in loads) / updates if updates else 0.0
    calls_per_s = (window["calls1"] - window["calls0"]) / wall if redis else 0.0
    return {
        "config": config,
        "guests": total,
        "connected": sum(load["connected"] for load in loads),
        "cpu_pct": 100 * (window["cpu1"] - window["cpu0"]) / wall,
        "redis_cpu_pct": 100 * (window["redis_cpu1"] - window["redis_cpu0"]) / wall,
        "updates_per_s": sum(load["updates_per_s"] for load in loads),
        "cpu_us_per_update": (window["cpu1"] - window["cpu0"]) / updates * 1e6 if updates else float("nan"),
        "delay_p50_ms": delays["p50"],
        "delay_p99_ms": delays["p99"],
        "within_1s": within,
        "redis_calls_per_s": calls_per_s,
        "redis_calls_per_s_per_1000": calls_per_s / total * 1000,
        "loads": loads,
    }


def _calls(mock: Server) -> list[tuple[float, float]]:
    calls = [tuple(c) for c in httpx.get(mock.base + "/calls", timeout=10).json()]
    return sorted((float(c[0]), float(c[1])) for c in calls)


def _dispatch(mock: Server, args: argparse.Namespace) -> dict[str, list[float]]:
    url = f"{mock.base}/chat?chunks=3&first=0.002&record=1"
    out: dict[str, list[float]] = {}
    with ExitStack() as stack:
        redis = Redis()
        stack.callback(redis.stop)
        instances = _instances(
            stack, url, args.dispatch_instances, redis, "bench-dispatch", queue_size=args.dispatch + 10
        )
        _calls(mock)
        share = args.dispatch // args.dispatch_instances
        _drive_all(
            [
                {"kind": "guestqueue", "url": s.base, "mode": "streams", "concurrency": share, "count": share}
                for s in instances
            ],
            lambda: None,
            lambda: None,
        )
        calls = _calls(mock)
        out["gaps_ms"] = [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(calls)][3:]
    with ExitStack() as stack:
        redis = Redis()
        stack.callback(redis.stop)
        instances = _instances(
            stack,
            url,
            args.dispatch_instances,
            redis,
            "bench-paced",
            queue_size=args.paced + 10,
            interval_s=args.interval_s,
            concurrency=4,
        )
        _calls(mock)
        share = args.paced // args.dispatch_instances
        _drive_all(
            [
                {"kind": "guestqueue", "url": s.base, "mode": "streams", "concurrency": share, "count": share}
                for s in instances
            ],
            lambda: None,
            lambda: None,
        )
        starts = [c[0] for c in _calls(mock)]
        out["paced_excess_ms"] = [(b - a - args.interval_s) * 1000 for a, b in itertools.pairwise(starts)]
    return out


def run(args: argparse.Namespace) -> Result:
    counts = [int(c) for c in args.counts.split(",") if c]
    configs = [c for c in args.configs.split(",") if c]
    result = Result(
        "scaleout",
        {
            k: getattr(args, k)
            for k in (
                "counts",
                "configs",
                "settle_s",
                "measure_s",
                "ramp_per_s",
                "dispatch",
                "interval_s",
                "paced",
                "dispatch_instances",
                "max_per_process",
            )
        },
    )
    runs: list[dict[str, Any]] = []
    with servers.mock() as mock:
        url = f"{mock.base}/chat?chunks=20"
        for count in counts:
            for config in configs:
                if count / int(config.split("-")[1]) > args.max_per_process:
                    continue
                runs.append(_waiting(config, count, url, args))
        dispatch = _dispatch(mock, args)
    result.raw.update(runs=runs, dispatch=dispatch)
    _tabulate(result, runs, dispatch, args)
    return result


def _tabulate(
    result: Result, runs: list[dict[str, Any]], dispatch: dict[str, list[float]], args: argparse.Namespace
) -> None:
    table = Table(
        "waiting guests at 1 Hz, split over the instances (CPU: every guestqueue process + redis-server)",
        [
            "config",
            "guests",
            "connected",
            "updates/s",
            "delay p50 ms",
            "delay p99 ms",
            "within 1 s %",
            "CPU % (all)",
            "of it Redis %",
            "µs CPU/update",
            "Redis cmds/s",
            "cmds/s per 1000 guests",
        ],
    )
    for r in runs:
        table.add(
            r["config"],
            r["guests"],
            r["connected"],
            r["updates_per_s"],
            r["delay_p50_ms"],
            r["delay_p99_ms"],
            r["within_1s"] * 100,
            r["cpu_pct"],
            r["redis_cpu_pct"],
            r["cpu_us_per_update"],
            r["redis_calls_per_s"],
            r["redis_calls_per_s_per_1000"],
        )
    result.tables.append(table)
    gaps, paced = summary(dispatch["gaps_ms"]), summary(dispatch["paced_excess_ms"])
    d = Table(
        f"{args.dispatch_instances} Redis-backed instances: a freed slot's idle time until the next upstream "
        f"start, and pacing (interval {args.interval_s * 1000:.0f} ms; start-to-start minus the interval), ms",
        ["measure", "n", "p50", "p99", "max", "min"],
    )
    d.add(
        "slot free → next start",
        gaps["n"],
        gaps.get("p50"),
        gaps.get("p99"),
        gaps.get("max"),
        min(dispatch["gaps_ms"], default=float("nan")),
    )
    d.add(
        "pacing excess",
        paced["n"],
        paced.get("p50"),
        paced.get("p99"),
        paced.get("max"),
        min(dispatch["paced_excess_ms"], default=float("nan")),
    )
    result.tables.append(d)
    if gaps["n"]:
        result.target("slot free → next start across instances, p50 ms", round(gaps["p50"], 2), "≤ 5", gaps["p50"] <= 5)
    if paced["n"]:
        low, high = min(dispatch["paced_excess_ms"]), paced["max"]
        result.target("pacing gap - interval, min ms", round(low, 2), "≥ 0", low >= -1.0)
        result.target("pacing gap - interval, max ms", round(high, 2), "≤ +20", high <= 20)
    memory = {r["guests"]: r for r in runs if r["config"] == "memory-1"}
    for r in runs:
        if r["config"] == "redis-3" and r["guests"] in memory:
            ratio = r["cpu_us_per_update"] / memory[r["guests"]]["cpu_us_per_update"]
            result.target(
                f"CPU per update, 3 on Redis ÷ 1 in memory, at {r['guests']}", round(ratio, 2), "≤ 1.5", ratio <= 1.5
            )
            result.target(
                f"updates within 1 s % (3 on Redis, {r['guests']})",
                round(r["within_1s"] * 100, 3),
                "≥ 99.9",
                r["within_1s"] >= 0.999,
            )
