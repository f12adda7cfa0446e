"""The long versions of the chaos scenarios (docs/reliability.md), with a summary table.

    python bench/chaos.py --requests 3000 --duration 120
    python bench/chaos.py --only soak,frozen --requests 500
    python bench/chaos.py --only forgetful --repeat 10

Each scenario is the same code the CI tests run (tests/chaos/), judged by the same oracle
(tests/chaos/oracle.py), only with bigger counts. Exit status 1 if any promise broke.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the oracle and scenarios live in tests/chaos, shared with CI

from tests.chaos.flood import flood_beside_normal  # noqa: E402
from tests.chaos.forgetful import forgetful_redis  # noqa: E402
from tests.chaos.frozen import frozen_reader  # noqa: E402
from tests.chaos.oracle import Verdict  # noqa: E402
from tests.chaos.process import sigkill_then_restart, sigterm_with_crowd  # noqa: E402
from tests.chaos.resets import resets_before_stream  # noqa: E402
from tests.chaos.rolling import rolling_restart  # noqa: E402
from tests.chaos.soak import SoakConfig, chaos_soak  # noqa: E402
from tests.conftest import MockUpstream, run_mock_upstream  # noqa: E402

SCENARIOS = ("soak", "frozen", "resets", "sigterm", "sigkill", "flood", "rolling", "forgetful")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="chaos soak: requests (default 3000)")
    parser.add_argument("--duration", type=float, default=120.0, help="chaos soak: stop starting after this many s")
    parser.add_argument("--concurrency", type=int, default=80, help="chaos soak: guests at once")
    parser.add_argument("--timeout", type=float, default=3.0, help="chaos soak: GUEST_REQUEST_TIMEOUT_SEC")
    parser.add_argument("--resets", type=int, default=2000, help="connections closed before the stream")
    parser.add_argument("--waiting", type=int, default=500, help="SIGTERM: guests in line")
    parser.add_argument("--processing", type=int, default=50, help="SIGTERM: guests processing")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILL: kill-and-restart rounds")
    parser.add_argument("--flood-clients", type=int, default=60, help="flood: normal clients")
    parser.add_argument(
        "--rolling-guests",
        type=int,
        default=2000,
        help="rolling: guests through nginx while 3 instances restart (one killed)",
    )
    parser.add_argument(
        "--forgetful-guests",
        type=int,
        default=500,
        help="forgetful: guests through nginx while Redis is flushed, restarted empty, stalled",
    )
    parser.add_argument("--visitors", type=int, default=30, help="forgetful: waiting-room visitors beside them")
    parser.add_argument("--repeat", type=int, default=1, help="run the chosen scenarios this many times")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    return parser.parse_args(argv)


def scenarios(
    args: argparse.Namespace, upstream: MockUpstream, tmp: Path
) -> dict[str, Callable[[], Awaitable[Verdict]]]:
    soak = SoakConfig(
        requests=args.requests,
        duration_s=args.duration,
        concurrency=args.concurrency,
        workers=12,
        queue_size=args.concurrency - 8,
        timeout_s=args.timeout,
        retries=2,
        grace_s=0.5,
        seed=args.seed,
        rss_bound_mb=150.0,
    )
    return {
        "soak": lambda: chaos_soak(upstream, tmp, soak),
        "frozen": lambda: _both_frozen(tmp),
        "resets": lambda: resets_before_stream(upstream, tmp, connections=args.resets, batch=100, rss_bound_mb=60),
        "sigterm": lambda: sigterm_with_crowd(
            upstream, tmp, waiting=args.waiting, processing=args.processing, rss_bound_mb=150
        ),
        "sigkill": lambda: sigkill_then_restart(upstream, tmp, rounds=args.kills, requests=200, workers=20),
        "flood": lambda: flood_beside_normal(upstream, tmp, clients=args.flood_clients, each=3, flood_connections=16),
        "rolling": lambda: rolling_restart(upstream, tmp, guests=args.rolling_guests),
        "forgetful": lambda: forgetful_redis(upstream, tmp, guests=args.forgetful_guests, visitors=args.visitors),
    }


async def _both_frozen(tmp: Path) -> Verdict:
    answer = await frozen_reader(tmp, phase="answer", send_timeout_s=2.0, grace_s=1.0)
    pings = await frozen_reader(tmp, phase="pings", send_timeout_s=2.0, grace_s=1.0)
    answer.violations += pings.violations
    answer.figures = {"answer": answer.figures, "pings": pings.figures}
    return answer


def summary(verdict: Verdict) -> str:
    figures = {**verdict.figures}
    keep = ("accepted", "http_429", "reconnected", "upstream_calls")
    figures.update({k: v for k, v in verdict.counts.items() if k in keep or k.startswith(("row_", "left_in"))})
    return ", ".join(f"{k}={v}" for k, v in figures.items())


async def run(args: argparse.Namespace) -> int:
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    rows: list[tuple[str, float, Verdict]] = []
    for _run in range(args.repeat):
        with run_mock_upstream() as upstream, tempfile.TemporaryDirectory() as tmp:
            table = scenarios(args, upstream, Path(tmp))
            for name in chosen:
                began = time.monotonic()
                print(f"running {name} ...", file=sys.stderr, flush=True)
                verdict = await table[name]()
                rows.append((name, time.monotonic() - began, verdict))
    print(f"\nmachine: {os.cpu_count()} CPUs, {_cpu_model()}, Python {platform.python_version()}")
    print(f"command: python bench/chaos.py {' '.join(sys.argv[1:])}\n")
    print("| scenario | seconds | violations | measured |")
    print("|---|---|---|---|")
    for name, seconds, verdict in rows:
        print(f"| {name} | {seconds:.1f} | {len(verdict.violations)} | {summary(verdict)} |")
    broken = [v for _, _, v in rows if v.violations]
    for verdict in broken:
        print(f"\n{verdict.scenario}:", *verdict.violations[:20], sep="\n  ")
    return 1 if broken else 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Expected failures (the scenarios cause them) would bury the table; the oracle reports what matters.
    logging.getLogger("guestqueue").setLevel(logging.CRITICAL)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
