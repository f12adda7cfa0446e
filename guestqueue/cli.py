"""``guestqueue serve``: settings from GUEST_* variables and flags, then uvicorn (``guestqueue simulate``
lives in simulate/).

Start-up order matters: the listening socket is bound first, then the request
log is checked, then Redis (with ``GUEST_REDIS_URL``), then uvicorn starts. A
second instance on a port in use fails before it touches the log (whose
start-up marks open rows ``abandoned``: they belong to the live instance), and
a log that cannot be written or a Redis that cannot be used stops start-up with
one line instead of uvicorn's traceback (from every worker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Generator, Sequence
from types import FrameType

import httpx
import redis.asyncio as aioredis
import uvicorn

from . import requestlog, simulate
from .config import Settings, SettingsError, shown_redis_url, unknown_variables
from .errors import StartupError
from .lines.redis.boundary import FAILURES as REDIS_FAILURES
from .linespec import DEFAULT_LINE, load_lines
from .pull.worker import add_app_dir, add_worker_parser, import_from_app_dir, run_worker
from .upstream import load_workflow
from .web.app import API_PREFIX, GuestQueue, create_app
from .web.server import uvicorn_config

logger = logging.getLogger("guestqueue")


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
    add_app_dir(serve)
    add_worker_parser(commands)
    simulate.add_arguments(
        commands.add_parser(
            "simulate",
            help="run a line's real admission, pacing and estimates on a virtual clock (what-if limits)",
        )
    )
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
    settings = Settings.from_env(**overrides)
    # Every line's file and python upstream are checked now: a mistake is one line and exit 2.
    for spec in load_lines(settings.config, settings).values():
        if spec.settings.resolved_upstream_kind == "python":
            try:
                load_workflow(spec.settings.upstream_url)
            except ValueError as exc:
                raise SettingsError(str(exc) if spec.name == DEFAULT_LINE else f"line {spec.name}: {exc}") from None
    return settings


# A full (generation 2) garbage collection walks every live object: with 10 000
# waiting guests that is about a million, and the pause lands in every guest's
# position updates (p99 ~1.7 s at 10 000, docs/benchmarks.md). Objects that
# survive a few seconds are mostly the connections themselves, so they are
# frozen (left alone by the collector; refcounting still frees them). Cycles
# frozen by mistake are reclaimed at the next periodic unfreeze.
RESTART_PAUSE_S = 1.0  # before starting again a worker that died (a crash loop must not spin)

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


def bind_socket(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything else starts (see the module docstring)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart despite TIME_WAIT
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"GUEST_HOST={settings.host!r}: {reason}") from None
        raise StartupError(f"GUEST_PORT={settings.port!r}: {reason}") from None
    return sock


MAX_PAGES_SHOWN = 5  # the banner names this many lines' chat pages; GET /api/v1/lines has them all


def where_things_are(settings: Settings, host: str, port: int) -> list[str]:
    """What a new user needs to know at start-up: where to go, what answers, where it is written down."""
    shown_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    base = f"http://{shown_host}:{port}{API_PREFIX}"
    kind = settings.resolved_upstream_kind
    if kind == "demo":
        upstream = "demo (built in; set GUEST_UPSTREAM_URL for your own)"
    else:
        url = httpx.URL(settings.upstream_url) if kind != "python" else None
        shown = str(url.copy_with(username=None, password=None)) if url is not None else settings.upstream_url
        upstream = f"{kind} {shown}" + (f" (model {settings.upstream_model})" if settings.upstream_model else "")
    log = os.path.abspath(settings.db_path) if settings.db_path else "off (GUEST_DB_PATH is empty)"
    line = "in this process (GUEST_REDIS_URL is empty)"
    if settings.redis_url:
        line = f"shared through {shown_redis_url(settings.redis_url)} (prefix {settings.redis_prefix!r})"
    processes = f" ({settings.workers} processes)" if settings.workers > 1 else ""
    lines = [
        f"listening on http://{shown_host}:{port}{processes}",
        f"upstream:    {upstream}",
        f"line:        {line}",
        f"chat page:   {base}/static/chat.html",
        f"dashboard:   {base}/dashboard",
        f"request log: {log}",
    ]
    if settings.config:
        names = list(load_lines(settings.config, settings))
        lines_url = f"http://{shown_host}:{port}/api/v1/lines"
        lines[1:2] = [f"lines:       {', '.join(names)} (from {settings.config}), at {lines_url}"]
        if DEFAULT_LINE not in names:  # no /api/v1/guest/ then: each line's own pages
            pages = [f"chat page:   {lines_url}/{name}/static/chat.html" for name in names[:MAX_PAGES_SHOWN]]
            if len(names) > MAX_PAGES_SHOWN:
                pages.append(f"             (and {len(names) - MAX_PAGES_SHOWN} more lines: {lines_url})")
            at = next(i for i, line in enumerate(lines) if line.startswith("chat page:"))
            lines[at : at + 2] = [*pages, f"dashboard:   {lines_url}/{names[0]}/dashboard"] if names else []
    if not settings.admin_api_key:
        lines.append("warning: GUEST_ADMIN_API_KEY is not set: /queue/history and /metrics answer only local callers")
    return lines


def check_request_log(settings: Settings) -> None:
    if not settings.db_path:
        return
    try:
        requestlog.check(settings.db_path)
    except requestlog.LogUnavailable as exc:
        raise StartupError(f"GUEST_DB_PATH={settings.db_path!r}: {exc}") from None


REDIS_CHECK_TIMEOUT_S = 5.0


def check_redis(settings: Settings) -> None:
    """One PING before any worker starts: a Redis that is down, refuses the password or does not
    know an option of the URL stops start-up with one line (exit 1; systemd or compose start it
    again) instead of a traceback from each worker's start-up."""
    if not settings.redis_url:
        return
    try:
        asyncio.run(_ping(settings.redis_url))
    except (*REDIS_FAILURES, TypeError, ValueError) as exc:
        # TypeError: redis-py takes unknown URL options as keyword arguments of its connection.
        reason = f"an option redis-py does not know ({exc})" if isinstance(exc, TypeError) else str(exc)
        raise StartupError(
            f"GUEST_REDIS_URL={shown_redis_url(settings.redis_url)!r}: cannot use Redis: {reason or type(exc).__name__}"
        ) from None


async def _ping(url: str) -> None:
    client = aioredis.from_url(url, socket_connect_timeout=REDIS_CHECK_TIMEOUT_S, socket_timeout=REDIS_CHECK_TIMEOUT_S)
    try:
        await client.ping()
    finally:
        await client.aclose()


class GuestServer(uvicorn.Server):
    """uvicorn, plus: on SIGTERM/SIGINT guestqueue drains while still listening.

    uvicorn stops listening as soon as it is told to exit, so guests arriving
    during the drain would get "connection refused" instead of 503
    ``shutting_down`` (DESIGN.md). So the first signal only starts the drain
    (new guests 503, the line told, running work given the grace), and uvicorn
    is told to exit when the drain is over; by then every stream has had its
    terminal event. A second signal exits at once, like uvicorn's second Ctrl+C.
    """

    def __init__(self, config: uvicorn.Config, guest: GuestQueue) -> None:
        super().__init__(config)
        self.guest = guest
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain: asyncio.Future[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            # A worker of `--workers N` starts with the stop signals held back (see supervise):
            # one that came while it was starting is taken now, by this server, and drains it.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        freezer = asyncio.create_task(freeze_survivors(), name="guestqueue-gc-freeze")
        try:
            await super().serve(sockets)
        finally:
            freezer.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:
            super().handle_exit(sig, frame)
            self.force_exit = True
            return
        if not self.started or self._loop is None or self.guest.service is None:
            super().handle_exit(sig, frame)  # nothing to drain yet
            return
        logger.info("shutting down: draining (new requests get 503 shutting_down)")
        self._draining = True
        # A signal handler runs between two bytecodes of the loop's own thread: schedule, do not run.
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.guest.drain()
        finally:
            self.should_exit = True


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        return run_worker(args)
    if args.command == "simulate":
        return simulate.main(args)
    import_from_app_dir(args)  # a python upstream (module:function) next to where serve runs
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"guestqueue: error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind_socket(settings)
    except StartupError as exc:
        print(f"guestqueue: error: {exc}", file=sys.stderr)
        return 1
    try:
        check_request_log(settings)
        check_redis(settings)
    except StartupError as exc:
        sock.close()
        print(f"guestqueue: error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = sock.getsockname()[:2]
    for line in where_things_are(settings, host, port):
        logger.info("%s", line)
    for warning in unknown_variables():
        logger.warning("%s", warning)
    if settings.workers > 1:
        return supervise(settings, sock, args)
    serve_here(settings, sock, args)
    return 0


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def die_with(parent: int) -> None:
    """Linux: this worker gets SIGTERM (and drains) if the supervising parent is killed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before that took effect
        os.kill(os.getpid(), signal.SIGTERM)


def serve_here(settings: Settings, sock: socket.socket, args: argparse.Namespace) -> None:
    """One server process on the bound socket, until it has drained."""
    app = create_app(settings)
    config = uvicorn_config(app, settings, log_level=args.log_level, access_log=args.access_log)
    # uvicorn re-raises the signal it shut down for; a drained shutdown is a clean exit (0).
    signal.signal(signal.SIGTERM, lambda sig, frame: None)
    GuestServer(config, app.state.guestqueue).run(sockets=[sock])


def supervise(settings: Settings, sock: socket.socket, args: argparse.Namespace) -> int:
    """``--workers N``: N server processes share the listening socket (the kernel spreads the
    connections) and one line (Redis). SIGTERM or SIGINT here is passed on to every one, each
    drains as a single server does, and this process exits 0 once they all did. A worker that
    dies on its own is started again."""
    children: dict[int, int] = {}  # pid -> worker number
    stopping = False

    parent = os.getpid()

    def start(number: int) -> None:
        # Held back across the fork: a child that got a stop before its server's own handlers were
        # in place would lose it (or run `stop` below, copied by fork) and serve on; the server
        # takes it once it listens for signals (GuestServer.capture_signals).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the child: a server of its own on the shared socket
            # Its own process group: a Ctrl-C in the terminal (or systemd's SIGTERM to the whole
            # group, without KillMode=mixed) reaches only the parent, which passes on exactly one
            # SIGTERM; a second one would make a worker exit without draining.
            os.setpgid(0, 0)
            die_with(parent)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                serve_here(settings, sock, args)
            finally:
                os._exit(0)
        children[pid] = number
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for number in range(settings.workers):
        start(number)
    logger.info("%d worker processes: %s", settings.workers, ", ".join(map(str, children)))
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        number = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed |= code != 0
        else:
            logger.warning("worker %d (pid %d) exited with %d; starting it again", number, pid, code)
            time.sleep(RESTART_PAUSE_S)
            if not stopping:  # a stop during the pause: nobody would tell the new worker
                start(number)
    sock.close()
    return 1 if failed else 0
