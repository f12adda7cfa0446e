"""Fair shares (issue 25): two shares, one asking ten times as often, on ``fifo`` and ``fair``.

Each row runs the same seeded load twice through guestqueue's real line, service, worker pool
and estimator (``guestqueue simulate``'s virtual clock, guestqueue/simulate/): once with
``fairness = "fifo"``, once with ``"fair"``. Reported per order: the light share's and the
heavy share's median wait, the largest difference in service between the two over any time both
were backlogged against the bound docs/design.md states (2 U), Jain's index of their service
while both were backlogged, and the answers per minute (fairness must not cost throughput).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from guestqueue.config import Settings
from guestqueue.linespec import default_line
from guestqueue.simulate import Durations, Scenario, ShareMix, simulate, what_if

from ..report import Result, Table

ORDERS = ("fifo", "fair")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guests", type=int, default=600)
    parser.add_argument("--rate-per-s", type=float, default=0.2, help="Poisson arrivals, both shares together")
    parser.add_argument("--durations", default="lognormal:2,0.4", help="upstream call seconds (simulate's forms)")
    parser.add_argument("--shares", default="heavy=10,light=1")
    parser.add_argument("--slots", default="1,2", help="max_concurrent_requests to try, comma-separated")
    parser.add_argument("--seeds", default="1,2,3")


def smoke(args: argparse.Namespace) -> None:
    args.guests, args.slots, args.seeds = 60, "1", "1"


def run(args: argparse.Namespace) -> Result:
    params = {k: getattr(args, k) for k in ("guests", "rate_per_s", "durations", "shares", "slots", "seeds")}
    result = Result("fairness", params)
    table = Table(
        f"{args.shares}, {args.guests} guests at {args.rate_per_s:g}/s, calls {args.durations}, no pacing",
        [
            "slots",
            "seed",
            "order",
            "light p50 wait s",
            "heavy p50 wait s",
            "gap max",
            "bound 2U",
            "Jain (backlogged)",
            "answers/min",
        ],
    )
    runs: list[dict[str, Any]] = []
    for slots in (int(s) for s in args.slots.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            scenario = Scenario(
                args.guests, args.rate_per_s, Durations.parse(args.durations), seed, ShareMix.parse(args.shares)
            )
            for order in ORDERS:
                spec = what_if(
                    default_line(Settings(db_path="")), max_concurrent_requests=str(slots), upstream_interval_s="0"
                )
                summary = simulate(dataclasses.replace(spec, fairness=order), scenario).summary()
                shares = summary["shares"]
                per = shares["per_share"]
                light, heavy = (per.get(name, {}) for name in ("light", "heavy"))
                table.add(
                    slots,
                    seed,
                    order,
                    light.get("wait_p50_sec"),
                    heavy.get("wait_p50_sec"),
                    float(shares["service_gap_max"]),
                    float(shares["service_gap_bound"]),
                    shares["jain_index_backlogged"],
                    summary["throughput_per_min"],
                )
                runs.append({"slots": slots, "seed": seed, "order": order, "shares": shares, "summary": summary})
    result.tables.append(table)
    result.raw["runs"] = runs
    fair = [r["shares"] for r in runs if r["order"] == "fair"]
    result.target(
        "fair: largest service gap within 2U (every run)",
        float(max(s["service_gap_max"] - s["service_gap_bound"] for s in fair)),
        "<= 0",
        all(s["service_gap_max"] <= s["service_gap_bound"] for s in fair),
    )
    return result
