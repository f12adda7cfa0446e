"""Compare: one scenario on another revision and on this working tree, side by side, in one sitting.

    python -m bench run compare --against REV --scenario waiting --rounds 3 \\
        --args "--counts 5000 --servers guestqueue --settle-s 3 --measure-s 10"

REV is checked out in a temporary git worktree; each round runs the scenario there and here, one
after the other (the order flips every round, against the machine's drift), each in its own
``python -m bench run`` from its own checkout, so the servers it starts run that checkout's code
(same virtualenv). The table gives each numeric cell of the scenario's first table: its median
over the rounds on both sides, and this tree's over REV's. A regression shows the day it lands.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..report import Result, Table

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = "working tree"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--against", default="HEAD", help="the revision to compare with (git rev-parse)")
    # (dest: `scenario` is the name of the subcommand itself, compare)
    parser.add_argument("--scenario", dest="compared", default="waiting", help="the scenario to run on both sides")
    parser.add_argument("--args", default="", help="the scenario's own options, as one quoted string")
    parser.add_argument("--rounds", type=int, default=3)


def smoke(args: argparse.Namespace) -> None:
    args.rounds, args.inner_smoke = 1, True


def run(args: argparse.Namespace) -> Result:
    revision = _git("rev-parse", "--verify", f"{args.against}^{{commit}}")
    result = Result(
        "compare", {"against": revision, "scenario": args.compared, "args": args.args, "rounds": args.rounds}
    )
    runs: dict[str, list[dict[str, Any]]] = {revision: [], HERE: []}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        old = Path(scratch) / "checkout"
        _git("worktree", "add", "--detach", str(old), revision)
        try:
            for round_ in range(args.rounds):
                sides = [(revision, old), (HERE, ROOT)]
                for name, checkout in sides if round_ % 2 == 0 else sides[::-1]:
                    out = Path(scratch) / f"{len(runs[name])}-{name.replace(' ', '-')}"
                    runs[name].append(_run_scenario(checkout, args, out))
        finally:
            _git("worktree", "remove", "--force", str(old))
    result.raw["runs"] = runs
    result.tables.append(_side_by_side(args.compared, revision, runs))
    return result


def _run_scenario(checkout: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench", "run", args.compared, "--out", str(out), *shlex.split(args.args)]
    if getattr(args, "inner_smoke", False):
        command.append("--smoke")
    subprocess.run(command, cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    body: dict[str, Any] = json.loads((out / f"{args.compared}.json").read_text())
    return body


def _side_by_side(scenario: str, revision: str, runs: dict[str, list[dict[str, Any]]]) -> Table:
    """Each numeric cell of the first table, by its row's leading text cells and its column."""
    table = Table(
        f"{scenario}: medians over {len(runs[HERE])} rounds, {revision[:10]} against the working tree",
        ["row", "column", revision[:10], HERE, "tree / rev"],
    )
    medians = {name: _medians(found) for name, found in runs.items()}
    for (row, column), before in medians[revision].items():
        after = medians[HERE].get((row, column))
        ratio = after / before if after is not None and before else None
        table.add(row, column, before, after, ratio)
    return table


def _medians(results: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    cells: dict[tuple[str, str], list[float]] = {}
    for body in results:
        first = body["tables"][0]
        names = [row[0] for row in first["rows"]]
        for row in first["rows"]:
            # A row is its first cell (a server, a config), and its second too where the first repeats
            # (the waiting scenario's rows per count); text cells elsewhere (a range) vary by run.
            key = str(row[0]) if names.count(row[0]) == 1 else f"{row[0]} {row[1]}"
            for column, cell in zip(first["columns"], row, strict=True):
                if _number(cell):
                    cells.setdefault((key, column), []).append(float(cell))
    return {cell: statistics.median(values) for cell, values in cells.items()}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # not NaN


def _git(*argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
