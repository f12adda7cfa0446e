"""Scenario 8, many tenants: what the key check and the line lookup add to each admission.

With ``--lines`` lines and ``--keys`` API keys in the catalog, each admission
on a line that is not public does what ``web/app.py`` does before reading the
body: find the line by name, say who the key is (``Access.principal``: the
admin-key comparison and the catalog's constant-time hash check) and whether
it may WRITE there. Timed in this process, call by call, for a right key, a
wrong secret of a known key id and an unknown key id. The catalog's check
costs the same for a secret one character off and for one wrong throughout
(one hash, one constant-time comparison of digests: nothing tells a guesser
how close it came). A right key costs a little more after the comparison (its
application is looked up), and a refusal too (the throttle's count, the 403),
which tells nothing the answer does not; an unknown key id is compared against
a dummy digest (the id is public: ``hint`` shows it). The
right key's whole check must stay under 0.1 ms at p50.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from starlette.requests import Request

from guestqueue.config import Settings
from guestqueue.linespec import parse_line
from guestqueue.tenancy.catalog import Catalog
from guestqueue.web.access import Access

from ..report import Result, Table

ADMIN_KEY = "bench-super-admin-key-0123456789"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=50_000, help="timed calls per kind of key")
    parser.add_argument("--seed", type=int, default=1)


def smoke(args: argparse.Namespace) -> None:
    args.lines, args.keys, args.calls = 5, 50, 500


def run(args: argparse.Namespace) -> Result:
    rng = random.Random(args.seed)
    settings = Settings(db_path="", admin_api_key=ADMIN_KEY)
    catalog = Catalog()
    apps = [catalog.new_application(f"app {n}") for n in range(max(1, args.lines // 10))]
    catalog.applications = {app.id: app for app in apps}
    specs = {}
    for n in range(args.lines):
        app = apps[n % len(apps)]
        spec = parse_line(f"line-{n}", {"application_id": app.id, "public": False}, settings, where="bench")
        specs[spec.name] = spec
    shown: list[tuple[str, str]] = []  # (key, a line it may WRITE on)
    for n in range(args.keys):
        app = apps[n % len(apps)]
        line = f"line-{rng.randrange(args.lines // len(apps)) * len(apps) + n % len(apps)}"
        key, secret = catalog.new_key(app, permissions={line: ["WRITE", "READ"]})
        catalog.keys[key.id] = key
        shown.append((secret, line))
    access = Access(settings)
    access.throttle.limit = 10**9  # measured here: the check itself, not the 429 of the wrong-key throttle
    kinds = {
        "right key": [(secret, line) for secret, line in shown],
        "wrong secret, last character off": [
            (secret[:-1] + ("A" if secret[-1] != "A" else "B"), line) for secret, line in shown
        ],
        "wrong secret, all of it": [(secret[: len("gq_") + 17] + "A" * 43, line) for secret, line in shown],
        "unknown key id": [
            (f"gq_{n:016x}_" + secret[len("gq_") + 17 :], line) for n, (secret, line) in enumerate(shown)
        ],
    }
    timings: dict[str, list[float]] = {}
    lookups: dict[str, list[float]] = {}
    for kind, pairs in kinds.items():
        timings[kind] = [_admission_check(access, catalog, specs, *rng.choice(pairs)) for _ in range(args.calls)]
        lookups[kind] = [_key_lookup(catalog, rng.choice(pairs)[0]) for _ in range(args.calls)]
    result = Result("tenants", {k: getattr(args, k) for k in ("lines", "keys", "calls", "seed")})
    for title, measured in (
        ("the key check and line lookup of one admission, refusal included (µs)", timings),
        ("the catalog's key check alone: id lookup, hash, constant-time comparison (µs)", lookups),
    ):
        table = Table(title, ["key", "p50", "p90", "p99", "mean"])
        for kind, samples in measured.items():
            q = statistics.quantiles(samples, n=100)
            table.add(kind, q[49], q[89], q[98], statistics.fmean(samples))
        result.tables.append(table)
    right = statistics.median(timings["right key"])
    # What a guesser could probe: whether a closer guess takes longer (it must not).
    wrong = statistics.median(lookups["wrong secret, last character off"]) / statistics.median(
        lookups["wrong secret, all of it"]
    )
    result.raw["p50_us"] = {kind: statistics.median(samples) for kind, samples in timings.items()}
    result.target(
        f"p50 of the check, {args.lines} lines, {args.keys} keys (ms)", right / 1000, "≤ 0.1", right / 1000 <= 0.1
    )
    result.target(
        "key check alone: p50 nearly right ÷ all wrong secret",
        wrong,
        "0.8 - 1.25 (the same cost)",
        0.8 <= wrong <= 1.25,
    )
    return result


def _key_lookup(catalog: Catalog, given: str) -> float:
    began = time.perf_counter_ns()
    catalog.principal(given)
    return (time.perf_counter_ns() - began) / 1000


def _admission_check(access: Access, catalog: Catalog, specs: dict[str, Any], given: str, line: str) -> float:
    request = Request(
        {
            "type": "http",
            "method": "POST",
            "path": f"/api/v1/lines/{line}/chat",
            "headers": [(b"x-api-key", given.encode())],
            "client": ("10.0.0.1", 5000),
        }
    )
    began = time.perf_counter_ns()
    spec = specs[line]
    try:
        principal = access.principal(request, catalog)
        principal.may("WRITE", spec.name, spec.application_id)
    except Exception:  # a refused key is an answer too
        pass
    return (time.perf_counter_ns() - began) / 1000
