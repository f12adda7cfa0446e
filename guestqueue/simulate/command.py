"""``guestqueue simulate``'s command line: its flags, the table it prints and the figure it draws."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from typing import Any

from ..config import ENV_NAMES, Settings, SettingsError
from ..linespec import DEFAULT_LINE, LineSpec, load_lines
from ..linespec.keys import FAIRNESS
from .run import WHAT_IF, Result, simulate, what_if
from .scenario import Durations, Scenario, ShareMix, SimulationError, parse_rate

PLOT_MISSING = "--plot needs matplotlib: pip install 'guestqueue[plot]'"


def table(summary: dict[str, Any]) -> str:
    """The summary as plain text, one figure a line."""
    s, sc = summary["settings"], summary["scenario"]
    wait, eta = summary["wait_sec"], summary["eta_error_sec"]

    def reasons(counts: dict[str, int]) -> str:
        return f"  ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""

    def sec(value: float | None, sign: bool = False) -> str:
        return "-" if value is None else (f"{value:+.1f}" if sign else f"{value:.1f}")

    rows = [
        (
            "line",
            f"{summary['line']}: {s['max_concurrent_requests']} at once, {s['upstream_interval_sec']:g} s "
            f"between starts, {s['max_queue_size']} waiting at most, wait limit {s['max_wait_sec']:g} s",
        ),
        (
            "scenario",
            f"{sc['guests']} guests at {sc['arrival_rate_per_sec']:g}/s, calls {sc['duration_dist']}, "
            f"seed {sc['seed']}",
        ),
        ("admitted", str(summary["admitted"])),
        ("served", str(summary["served"])),
        ("refused", f"{summary['refused']}{reasons(summary['refused_by_reason'])}"),
        ("ended otherwise", f"{sum(summary['ended_otherwise'].values())}{reasons(summary['ended_otherwise'])}"),
        ("wait p50/p90/p99/max", " / ".join(sec(wait[k]) for k in ("p50", "p90", "p99", "max")) + " s"),
        ("throughput", f"{summary['throughput_per_min']:.2f} answers/min"),
        (
            "ETA error",
            f"median {sec(eta['median_abs'])} s, p90 {sec(eta['p90_abs'])} s, "
            f"mean {sec(eta['mean_signed'], sign=True)} s (estimate - actual)",
        ),
        ("ETA calibration", calibrated(summary["eta_calibration"])),
        *shared(summary),
        ("queue peak", f"{summary['queue_peak']} waiting"),
        ("simulated", f"{summary['simulated_sec']:.0f} s ({summary['simulated_sec'] / 3600:.2f} h)"),
        ("real", f"{summary['real_sec']:.2f} s"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def shared(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """A row per share (--shares), and the service gap against its bound."""
    figures = summary["shares"]
    if figures is None:
        return []
    rows = [
        (
            f"share {name}",
            f"{f['served']} of {f['guests']} served, wait p50 {f['wait_p50_sec']} s / p90 {f['wait_p90_sec']} s, "
            f"service {f['service']}",
        )
        for name, f in figures["per_share"].items()
    ]
    rows.append(
        (
            f"fairness ({summary['scenario']['fairness']})",
            f"largest service gap while backlogged {figures['service_gap_max']} "
            f"(bound {figures['service_gap_bound']}), Jain's index while all backlogged "
            f"{figures['jain_index_backlogged']}",
        )
    )
    return rows


def calibrated(figures: dict[str, Any]) -> str:
    if not figures["guests"]:
        return "- (nobody waited)"
    return (
        f"{figures['inside_range_pct']:.1f} % started inside their p10-p90 range; median error "
        f"{figures['median_abs_error_pct']:.1f} % of the wait, mean {figures['mean_signed_error_pct']:+.1f} % "
        f"({figures['guests']} guests who waited)"
    )


def figure_class() -> Any:
    """matplotlib's Figure, or SimulationError: matplotlib is an optional extra (``[plot]``), and
    importing it takes half a second that ``guestqueue serve`` must not pay."""
    try:
        return importlib.import_module("matplotlib.figure").Figure
    except ImportError:
        raise SimulationError(PLOT_MISSING) from None


def plot(result: Result, path: str, figure: Any) -> None:
    """Wait over arrival time, and the line's length over time, in one PNG."""
    fig = figure(figsize=(9, 6), layout="constrained")
    waits, sizes = fig.subplots(2, 1, sharex=True)
    served = [g for g in result.guests if g.wait_s is not None]
    waits.scatter([g.arrival_s for g in served], [g.wait_s for g in served], s=4, label="started (wait)")
    refused = [g.arrival_s for g in result.guests if g.refused]
    if refused:
        waits.scatter(refused, [0.0] * len(refused), s=4, marker="x", color="tab:red", label="refused")
    waits.set_ylabel("wait (s)")
    waits.legend(loc="upper left")
    sizes.step([t for t, _ in result.samples], [n for _, n in result.samples], where="post")
    sizes.set_ylabel("guests waiting")
    sizes.set_xlabel("time (s, virtual)")
    fig.suptitle(f"guestqueue simulate: line {result.spec.name}, {result.scenario.guests} guests")
    fig.savefig(path, dpi=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file of lines [GUEST_CONFIG]")
    parser.add_argument("--line", default=DEFAULT_LINE, help=f"the line to simulate (default {DEFAULT_LINE})")
    parser.add_argument("--guests", default="500", help="guests who arrive (default 500)")
    parser.add_argument("--arrival-rate", default="1/s", help="Poisson arrivals, R/s or R/min (default 1/s)")
    parser.add_argument(
        "--duration-dist",
        default="lognormal:2,0.5",
        help="upstream call seconds: lognormal:MU,SIGMA | fixed:S | exponential:MEAN (default lognormal:2,0.5)",
    )
    parser.add_argument("--seed", default="1", help="random seed (default 1)")
    parser.add_argument(
        "--shares",
        metavar="NAME=WEIGHT,...",
        help="guests come from these shares, by weight (e.g. heavy=10,light=1): what each got is reported",
    )
    parser.add_argument("--fairness", choices=FAIRNESS, help="what if the line had this fairness")
    for name in WHAT_IF:
        flag = "--" + ENV_NAMES[name].removeprefix("GUEST_").lower().replace("_", "-")
        parser.add_argument(flag, dest=name, metavar="VALUE", help=f"what if the line had this {ENV_NAMES[name]}")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--plot", metavar="FILE.png", help="draw waits and the line's length (needs matplotlib)")


def main(args: argparse.Namespace) -> int:
    """``guestqueue simulate``: bad input is one line on stderr and exit code 2."""
    try:
        figure = figure_class() if args.plot else None
        spec, scenario = _load(args)
        result = simulate(spec, scenario)
        summary = result.summary()
        if figure is not None:
            plot(result, args.plot, figure)
    except (SimulationError, SettingsError) as exc:
        print(f"guestqueue: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the plot's file
        print(f"guestqueue: error: --plot={args.plot!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else table(summary))
    return 0


# A simulation signs no token: a waiting room only needs some key to be read (never used).
UNSIGNED = "guestqueue simulate signs nothing: no token secret needed"


def _load(args: argparse.Namespace) -> tuple[LineSpec, Scenario]:
    settings = Settings.from_env(config=args.config)
    if not (settings.token_secret or settings.token_key_file):
        settings = dataclasses.replace(settings, token_secret=UNSIGNED)
    lines = load_lines(settings.config, settings)
    if args.line not in lines:
        raise SimulationError(f"--line={args.line!r}: no such line (there are: {', '.join(lines)})")
    spec = what_if(lines[args.line], **{name: getattr(args, name) for name in WHAT_IF})
    if args.fairness is not None:
        spec = dataclasses.replace(spec, fairness=args.fairness)
    guests, seed = _whole(args.guests, "--guests", minimum=1), _whole(args.seed, "--seed", minimum=0)
    shares = ShareMix.parse(args.shares) if args.shares is not None else None
    durations = Durations.parse(args.duration_dist)
    return spec, Scenario(guests, parse_rate(args.arrival_rate), durations, seed, shares)


def _whole(text: str, flag: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise SimulationError(f"{flag}={text!r}: must be a whole number >= {minimum}")
    return value
