"""``guestqueue serve``: settings from GUEST_* variables and flags, then uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import signal
import socket
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

# A full (generation 2) garbage collection walks every live object: with 10 000
# waiting guests that is about a million, and the pause lands in every guest's
# position updates (p99 ~1.7 s at 10 000, docs/benchmarks.md). Objects that
# survive a few seconds are mostly the connections themselves, so they are
# frozen (left alone by the collector; refcounting still frees them). Cycles
# frozen by mistake are reclaimed at the next periodic unfreeze.
GC_FREEZE_EVERY_S = 10.0
GC_UNFREEZE_EVERY = 60  # freezes: about every 10 minutes


async def freeze_survivors(every_s: float = GC_FREEZE_EVERY_S, unfreeze_every: int = GC_UNFREEZE_EVERY) -> None:
    freezes = 0
    while True:
        await asyncio.sleep(every_s)
        freezes += 1
        if freezes % unfreeze_every == 0:
            gc.unfreeze()  # the next full collection sees everything again
            continue
        gc.collect(1)  # young garbage, cheap: do not freeze cycles that are already dead
        gc.freeze()


class GuestServer(uvicorn.Server):
    """uvicorn, plus: on SIGTERM/SIGINT the queue starts draining at once.

    uvicorn first waits for open connections to close and only then runs the
    lifespan shutdown, so streams must be ended from the signal itself.
    """

    def __init__(self, config: uvicorn.Config, guest: GuestQueue) -> None:
        super().__init__(config)
        self.guest = guest

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        freezer = asyncio.create_task(freeze_survivors(), name="guestqueue-gc-freeze")
        try:
            await super().serve(sockets)
        finally:
            freezer.cancel()

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
