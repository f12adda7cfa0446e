"""Scenario 3, ETA accuracy: steady random arrivals, varied upstream durations, few slots.

Each guest's first estimate (given at admission) against what really
happened. guestqueue's ``estimated_wait_sec`` estimates the wait until
processing starts; Gradio's ``rank_eta`` estimates the time until the result
(its code adds the function's average duration), so each is scored against
what it claims, and Gradio also against the start, for reference. Both
servers run at once against one mock upstream, with the same seeded load;
the load is mostly sleeping, so they do not crowd each other.
"""

from __future__ import annotations

import argparse
import statistics
import threading
from contextlib import ExitStack
from typing import Any

from .. import servers
from ..report import Result, Table
from .scaleout import Redis

KINDS = ("guestqueue", "gradio")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=150, help="guests per server")
    parser.add_argument("--rate-per-s", type=float, default=1.8, help="mean arrivals per second (Poisson)")
    parser.add_argument("--dur-min", type=float, default=0.5, help="shortest upstream duration, seconds")
    parser.add_argument("--dur-max", type=float, default=1.5, help="longest upstream duration, seconds")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20, help="first guests not scored (estimators learn)")
    parser.add_argument("--min-wait-s", type=float, default=0.5, help="guests who waited less are not scored")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--servers", default=",".join(KINDS))
    parser.add_argument("--line", choices=("memory", "redis"), default="memory", help="guestqueue's line")


def smoke(args: argparse.Namespace) -> None:
    args.count, args.rate_per_s, args.dur_min, args.dur_max, args.warmup = 12, 20.0, 0.05, 0.15, 2
    args.min_wait_s, args.servers = 0.05, "guestqueue"


def run(args: argparse.Namespace) -> Result:
    kinds = [k for k in args.servers.split(",") if k]
    result = Result(
        "eta",
        {
            k: getattr(args, k)
            for k in (
                "count",
                "rate_per_s",
                "dur_min",
                "dur_max",
                "concurrency",
                "warmup",
                "min_wait_s",
                "seed",
                "servers",
                "line",
            )
        },
    )
    rows: dict[str, list[dict[str, Any]]] = {}
    with ExitStack() as stack:
        mock = stack.enter_context(servers.mock())
        extra: list[str] = []
        if args.line == "redis":  # the shared line: its scripts, its views a tick old
            redis = Redis()
            stack.callback(redis.stop)
            extra = ["--redis-url", redis.url]
        url = f"{mock.base}/chat?chunks=5"
        started = {}
        for kind in kinds:
            if kind == "gradio":
                started[kind] = stack.enter_context(servers.gradio(url, concurrency=args.concurrency))
            else:
                started[kind] = stack.enter_context(
                    servers.guestqueue(url, concurrency=args.concurrency, queue_size=args.count + 10, extra=extra)
                )
        job = {
            "mode": "eta",
            "count": args.count,
            "rate_per_s": args.rate_per_s,
            "dur_min": args.dur_min,
            "dur_max": args.dur_max,
            "seed": args.seed,
        }

        def drive(kind: str) -> None:
            server = started[kind]
            rows[kind] = servers.drive({**job, "kind": servers.kind_of(server), "url": server.base})["rows"]

        threads = [threading.Thread(target=drive, args=(kind,)) for kind in kinds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    result.raw["rows"] = rows
    _tabulate(result, args, rows)
    return result


def score(rows: list[dict[str, Any]], actual: str, args: argparse.Namespace) -> dict[str, float]:
    """Median absolute error (seconds and relative to the real value) of the admission estimate."""
    scored = [r for r in rows[args.warmup :] if r.get("wait_s", 0.0) >= args.min_wait_s and actual in r]
    with_estimate = [r for r in scored if r.get("estimate_s") is not None]
    if not with_estimate:
        return {
            "n": len(scored),
            "with_estimate": 0,
            "abs_s": float("nan"),
            "rel": float("nan"),
            "mean_real_s": float("nan"),
        }
    abs_err = [abs(r["estimate_s"] - r[actual]) for r in with_estimate]
    rel_err = [abs(r["estimate_s"] - r[actual]) / r[actual] for r in with_estimate]
    return {
        "n": len(scored),
        "with_estimate": len(with_estimate),
        "abs_s": statistics.median(abs_err),
        "rel": statistics.median(rel_err),
        "mean_real_s": statistics.fmean(r[actual] for r in with_estimate),
    }


def _tabulate(result: Result, args: argparse.Namespace, rows: dict[str, list[dict[str, Any]]]) -> None:
    table = Table(
        "ETA at admission: median absolute error (guests after warm-up who waited ≥ min wait)",
        ["server", "estimate of", "scored", "with estimate", "mean real s", "median |err| s", "median |err| %"],
    )
    scores: dict[str, dict[str, float]] = {}
    for kind, kind_rows in rows.items():
        if kind == "gradio":
            scores[kind] = s = score(kind_rows, "result_s", args)
            table.add(
                kind, "result (rank_eta)", s["n"], s["with_estimate"], s["mean_real_s"], s["abs_s"], s["rel"] * 100
            )
            s2 = score(kind_rows, "wait_s", args)
            table.add(
                kind,
                "start (rank_eta, for reference)",
                s2["n"],
                s2["with_estimate"],
                s2["mean_real_s"],
                s2["abs_s"],
                s2["rel"] * 100,
            )
        else:
            scores[kind] = s = score(kind_rows, "wait_s", args)
            table.add(
                kind,
                "start (estimated_wait_sec)",
                s["n"],
                s["with_estimate"],
                s["mean_real_s"],
                s["abs_s"],
                s["rel"] * 100,
            )
    result.tables.append(table)
    gq = scores.get("guestqueue")
    if gq is not None:
        ranged = [
            r
            for r in rows["guestqueue"][args.warmup :]
            if r.get("wait_s", 0.0) >= args.min_wait_s and isinstance(r.get("range_s"), list)
        ]
        inside = sum(1 for r in ranged if r["range_s"][0] <= r["wait_s"] <= r["range_s"][1])
        share = 100 * inside / len(ranged) if ranged else float("nan")
        result.raw["guestqueue_inside_range_pct"] = share
        result.target("guests who started inside their p10-p90 range %", round(share, 1), "≥ 75", share >= 75)
        result.target("median |error| % of real wait", round(gq["rel"] * 100, 1), "≤ 15", gq["rel"] <= 0.15)
        gr = scores.get("gradio")
        if gr is not None:
            result.target(
                "better than Gradio's rank_eta (% vs %)",
                round(gq["rel"] * 100, 1),
                f"< {gr['rel'] * 100:.1f}",
                gq["rel"] < gr["rel"],
            )
