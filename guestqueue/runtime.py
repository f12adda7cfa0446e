"""The running queue, put together: which line, which pacer, who listens, in what order things
stop. The web layer's lifespan calls :func:`open_queue` inside its ``AsyncExitStack``.

Without ``GUEST_REDIS_URL`` the line and pacer are one in-process
:class:`~guestqueue.lines.memory.MemoryLine`; with it, a shared
:class:`~guestqueue.lines.redis.line.RedisLine` (see that module for the design).
Everything else is the same code either way.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from .config import Settings
from .gate import Gate
from .history import Stats
from .lines.memory import MemoryLine
from .lines.redis.answers import RedisAnswers
from .lines.redis.keys import Keys
from .lines.redis.line import RedisLine
from .lines.redis.places import RedisPlaces
from .lines.redis.relay import FlightRelay
from .lines.redis.tally import RedisTally
from .linespec import DEFAULT_LINE, LineSpec, default_line
from .metrics import Metrics
from .pull.board import JobBoard, MemoryJobBoard
from .pull.redisboard import RedisJobBoard
from .pull.upstream import PullUpstream, with_worker_notice, worker_problems
from .service import QueueService
from .store import RequestLog
from .upstream import Upstream
from .views import QueueViews
from .waitingroom.sessions import MemorySessions, RedisSessions, Sessions
from .waitingroom.tokens import TokenSigner
from .workers import FlightSink, WorkerPool

REDIS_CONNECTIONS = 256  # per instance, for commands
REDIS_CONNECTIONS_PER_LINE = 4  # each line's pub/sub listeners hold two more
REDIS_POOL_TIMEOUT_S = 5.0  # then LineUnavailable (503), as when Redis is down


@dataclass
class Queue:
    """One line, running: what the web layer serves (the service), and the parts it reports on."""

    service: QueueService
    log: RequestLog | None
    pool: WorkerPool = field(init=False)
    metrics: Metrics = field(init=False)
    views: QueueViews = field(init=False)
    sessions: Sessions | None = None  # an admission line's (waitingroom/sessions.py)
    jobs: JobBoard | None = None  # a pull line's (pull/board.py)
    _shared_stats: Stats | None = None  # every instance's totals, as of the last refresh()

    def apply(self, spec: LineSpec, upstream: Upstream | None) -> None:
        """The line's new spec (the admin API), at once: its mode and policy, limits, pacing and,
        with ``upstream``, a new upstream for the calls that start from now on."""
        service, settings = self.service, spec.settings
        purged = spec.purged_at > service.gate.spec.purged_at
        service.gate.spec = spec
        if self.sessions is not None and spec.admission is not None:
            self.sessions.reconfigure(spec.admission, _signer(spec))
        if isinstance(self.pool.upstream, PullUpstream):
            self.pool.upstream.max_receive_count = spec.max_receive_count
            upstream = None  # its board and its jobs stay
        if purged:
            service.purge(spec.purged_at)
        service.settings = settings
        service.positions.reconfigure(settings, spec.release_per_minute)
        service.line.reconfigure(
            max_size=settings.max_queue_size,
            max_concurrent=settings.max_concurrent_requests,
            interval_s=settings.upstream_interval_s,
            release_per_minute=spec.release_per_minute,
            max_starvation_s=spec.max_starvation_s,
        )
        if upstream is not None:
            service.upstream_kind = upstream.kind
        self.pool.reconfigure(settings, upstream or self.pool.upstream)

    async def refresh(self) -> None:
        """Read the line (and, shared, every instance's totals) for the next scrape."""
        await self.service.positions.refresh()
        if self.service.tally is not None:
            self._shared_stats = await self.service.tally.stats(self.service.stats)

    # -- the MetricsSource (metrics.py) ----------------------------------------------

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def spec(self) -> LineSpec:
        return self.service.gate.spec

    @property
    def stats(self) -> Stats:
        return self._shared_stats or self.service.stats

    @property
    def upstream_calls(self) -> Counter[str]:
        return self.pool.upstream_calls

    def queue_size(self) -> int:
        return self.service.line.peek().size

    def active_requests(self) -> int:
        return self.service.line.peek().active

    def session_counts(self) -> dict[str, int] | None:
        return self.sessions.counts() if self.sessions is not None else None


async def open_queue(
    stack: AsyncExitStack,
    settings: Settings,
    upstream: Upstream,
    log: RequestLog | None,
    *,
    spec: LineSpec | None = None,
    redis: aioredis.Redis | None = None,
    metrics: Metrics | None = None,
) -> Queue:
    """Build and start one line (``spec``, by default the ``guest`` line of ``settings``); ``stack``
    stops it (drains the service, stops the workers). ``redis`` and ``metrics`` may be shared by
    every line of the process."""
    spec = spec if spec is not None else default_line(settings)
    settings = spec.settings
    gate = Gate(spec)
    metrics = metrics if metrics is not None else Metrics(log)
    if settings.redis_url:
        if redis is None:
            redis = open_redis(settings)
            stack.push_async_callback(redis.aclose)
        if settings.resolved_upstream_kind == "pull":
            upstream = _pull(spec, RedisJobBoard(redis, Keys(redis_prefix(settings, spec.name)), spec.name))
        return await _open_shared(stack, gate, upstream, log, redis, metrics)
    if settings.resolved_upstream_kind == "pull":
        upstream = _pull(spec, MemoryJobBoard(spec.name))
    line = MemoryLine(
        max_size=settings.max_queue_size,
        max_concurrent=settings.max_concurrent_requests,
        interval_s=settings.upstream_interval_s,
        max_hold_s=settings.upstream_max_hold_s,
        release_per_minute=spec.release_per_minute,
        max_starvation_s=spec.max_starvation_s,
    )
    line.starts_allowed = gate.starts_allowed
    stack.push_async_callback(line.close)
    sessions = None
    if spec.admission is not None:
        sessions = Sessions(spec.name, spec.admission, _signer(spec), MemorySessions(line))
        stack.push_async_callback(sessions.close)
    service = QueueService(settings, line, line, upstream_kind=upstream.kind, gate=gate, sessions=sessions)
    line.on_moved = service.positions.moved
    return await _start(stack, service, upstream, service, log, metrics, sessions)


def _signer(spec: LineSpec) -> TokenSigner:
    assert spec.admission is not None
    return TokenSigner.for_line(spec.settings, spec.admission.token_secret, spec.name)


def _pull(spec: LineSpec, board: JobBoard) -> PullUpstream:
    return PullUpstream(board, max_receive_count=spec.max_receive_count)


def open_redis(settings: Settings, *, lines: int = 1) -> aioredis.Redis:
    """The process's Redis client: one pool for every line (each line's relay holds two connections)."""
    # Blocking: a burst of guests waits for a connection instead of failing ("Too many connections").
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_CONNECTIONS + REDIS_CONNECTIONS_PER_LINE * lines,
        timeout=REDIS_POOL_TIMEOUT_S,
    )
    return aioredis.Redis(connection_pool=pool)


def redis_prefix(settings: Settings, line: str) -> str:
    """The ``guest`` line keeps the deployment's prefix (as before lines); others get their own."""
    return settings.redis_prefix if line == DEFAULT_LINE else f"{settings.redis_prefix}:line:{line}"


async def _open_shared(
    stack: AsyncExitStack,
    gate: Gate,
    upstream: Upstream,
    log: RequestLog | None,
    redis: aioredis.Redis,
    metrics: Metrics,
) -> Queue:
    """The line, pacer and flight events on Redis (GUEST_REDIS_URL), shared with other instances."""
    spec = gate.spec
    settings = spec.settings
    instance_id = log.instance_id if log is not None else secrets.token_hex(8)
    line = RedisLine(
        redis,
        prefix=redis_prefix(settings, spec.name),
        instance_id=instance_id,
        max_size=settings.max_queue_size,
        max_concurrent=settings.max_concurrent_requests,
        interval_s=settings.upstream_interval_s,
        max_hold_s=settings.upstream_max_hold_s,
        instance_ttl_s=settings.instance_ttl_s,
        release_per_minute=spec.release_per_minute,
        max_starvation_s=spec.max_starvation_s,
    )
    line.starts_allowed = gate.starts_allowed
    await line.register({"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time()})
    stack.push_async_callback(line.close)
    places = RedisPlaces(redis, line.keys, instance_id)
    tally = RedisTally(redis, line.keys, settings.history_size)
    answers = RedisAnswers(redis, line.keys, settings.cache_ttl_s) if settings.cache_size > 0 else None
    sessions = None
    if spec.admission is not None:
        store = RedisSessions(redis, line)
        store.start()
        line.on_forgotten.append(store.give_back)  # before the window closes: no slot given twice
        sessions = Sessions(spec.name, spec.admission, _signer(spec), store)
        stack.push_async_callback(sessions.close)
    service = QueueService(
        settings,
        line,
        line,
        places=places,
        tally=tally,
        shared_answers=answers,
        upstream_kind=upstream.kind,
        gate=gate,
        sessions=sessions,
    )
    service.listeners.append(tally)
    line.on_rejoined.append(service.rejoin)
    line.on_forgotten.append(service.give_back)
    line.on_reordered.append(service.positions.kick)
    relay = FlightRelay(redis, line, places, service)
    relay.start()
    stack.push_async_callback(relay.stop)
    return await _start(stack, service, upstream, relay, log, metrics, sessions)


async def _start(
    stack: AsyncExitStack,
    service: QueueService,
    upstream: Upstream,
    sink: FlightSink,
    log: RequestLog | None,
    metrics: Metrics,
    sessions: Sessions | None = None,
) -> Queue:
    settings = service.settings
    queue = Queue(service, log, sessions=sessions)
    if isinstance(upstream, PullUpstream):
        board = queue.jobs = upstream.board
        stack.push_async_callback(board.close)
        service.on_drain.append(board.stop_receiving)  # open long polls end now: the stop is not held up
        service.positions.notice = with_worker_notice(board, service.positions.notice)
        service.health_checks.append(worker_problems(board))
    if sessions is not None:
        service.upstream_kind = "admission"
        sessions.on_ended.append(service.positions.estimator.record)  # a slot is held a session long
    queue.views = QueueViews(service, sessions)
    queue.metrics = metrics
    timing = metrics.add(service.name, queue)
    stack.callback(metrics.remove, service.name)
    line = service.line
    queue.pool = WorkerPool(settings, line, service.pacer, upstream, sink, on_paced=timing.paced, admitter=sessions)
    service.listeners.append(timing)
    service.on_drain.append(queue.pool.drain)
    service.busy.append(lambda: bool(queue.pool.active))
    service.health_checks.append(queue.pool.problems)
    if log is not None:
        service.listeners.append(log.for_line(service.name))
        service.health_checks.append(log.problems)
    stack.push_async_callback(queue.pool.stop)
    await service.start()
    queue.pool.start()
    if settings.resolved_upstream_kind in ("http", "openai") and service.gate.spec.upstream_trusted:
        queue.pool.probe(settings.upstream_url, service.name)  # a tenant's address is not probed unasked
    stack.push_async_callback(service.stop)
    return queue


@asynccontextmanager
async def run_queue(settings: Settings, upstream: Upstream, log: RequestLog | None = None) -> AsyncIterator[Queue]:
    """The queue without the web layer (benchmarks, embedding): started, then drained and stopped."""
    async with AsyncExitStack() as stack:
        yield await open_queue(stack, settings, upstream, log)
