"""``guestqueue serve``: settings from GUEST_* variables and flags, then uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from .app import GuestQueue, create_app
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


KEEP_ALIVE_S = 75


class GuestServer(uvicorn.Server):
    """uvicorn, plus: on SIGTERM/SIGINT the queue starts draining at once.

    uvicorn first waits for open connections to close and only then runs the
    lifespan shutdown, so streams must be ended from the signal itself.
    """

    def __init__(self, config: uvicorn.Config, guest: GuestQueue) -> None:
        super().__init__(config)
        self.guest = guest

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.guest.request_shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"guestqueue: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        lifespan="on",
        # Forwarded headers are believed only from GUEST_TRUSTED_PROXIES, by the app itself.
        proxy_headers=False,
        # Idle keep-alive connections outlive the client's (httpx: 5 s, nginx upstream keepalive: 60 s),
        # so a proxy never sends a request on a connection we are just closing (a POST is not retried).
        timeout_keep_alive=KEEP_ALIVE_S,
        # Let our own shutdown (finish work, then a terminal event for everyone) complete first.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    # uvicorn re-raises the signal it shut down for; a drained shutdown is a clean exit (0).
    signal.signal(signal.SIGTERM, lambda sig, frame: None)
    GuestServer(config, app.state.guestqueue).run()
    return 0
