"""``python -m bench run SCENARIO [--options]``: start the servers, drive the load, print and save the results.

``python -m bench plot`` draws docs/img/*.png from the saved waiting-guests results.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from .report import RESULTS, markdown
from .scenarios import SCENARIOS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one scenario")
    scenarios = run.add_subparsers(dest="scenario", required=True)
    for name, module in SCENARIOS.items():
        sub = scenarios.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        sub.add_argument("--smoke", action="store_true", help="tiny counts: checks the harness, measures nothing")
        sub.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON results")
        module.add_arguments(sub)
    markdown = commands.add_parser("markdown", help="the saved results as Markdown tables (for docs/benchmarks.md)")
    markdown.add_argument("results", type=Path, nargs="*", help="JSON files (default: every saved result)")
    plot = commands.add_parser("plot", help="PNG plots of CPU and memory against waiting guests")
    plot.add_argument("--results", type=Path, default=RESULTS / "waiting.json")
    plot.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "img")
    return parser


def _exit_on_sigterm(sig: int, frame: FrameType | None) -> None:
    # SystemExit unwinds the `with` blocks, so every server started is stopped.
    raise SystemExit(128 + sig)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = build_parser().parse_args(argv)
    if args.command == "plot":
        from .plot import plot

        for path in plot(args.results, args.out):
            print(path)
        return 0
    if args.command == "markdown":
        for path in args.results or sorted(RESULTS.glob("*.json")):
            print(markdown(path))
        return 0
    module = SCENARIOS[args.scenario]
    if args.smoke:
        module.smoke(args)
    result = module.run(args)
    print(result.render())
    print(f"\nsaved {result.save(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
