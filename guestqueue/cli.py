"""``guestqueue serve``: settings from GUEST_* variables and flags, then uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

import uvicorn

from .app import create_app
from .config import Settings, SettingsError
from .upstream import load_workflow


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guestqueue", description="A fair, bounded waiting line for slow upstreams.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (flags win over GUEST_* variables)")
    for f in dataclasses.fields(Settings):
        env = f.metadata["env"]
        flag = "--" + env.removeprefix("GUEST_").lower().replace("_", "-")
        help_text = f"{f.metadata['help']} [{env}, default {f.default!r}]"
        serve.add_argument(flag, dest=f.name, metavar="VALUE", help=help_text)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request (costs throughput)")
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
    settings = Settings.from_env(**overrides)
    if settings.resolved_upstream_kind == "python":
        try:
            load_workflow(settings.upstream_url)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"guestqueue: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        lifespan="on",
        # Let our own shutdown (finish work, then a terminal event for everyone) complete first.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    uvicorn.Server(config).run()
    return 0
