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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from .attendance import Attendance
from .config import Settings
from .core import Core, RequestListener
from .endings import Endings
from .gate import Gate
from .handover import Handover
from .lines.base import Line, Places
from .lines.local import LocalPlaces
from .lines.memory import MemoryLine
from .lines.redis.answers import RedisAnswers
from .lines.redis.follow import FlightFollower
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
from .requestlog import RequestLog
from .service import QueueService
from .stats import Stats
from .upstream import Upstream
from .views import QueueViews
from .waitingroom.redissessions import RedisSessions
from .waitingroom.sessions import MemorySessions, Sessions
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
    pool: WorkerPool
    metrics: Metrics
    views: QueueViews
    sessions: Sessions | None = None  # an admission line's (waitingroom/sessions.py)
    jobs: JobBoard | None = None  # a pull line's (pull/board.py)
    _shared_stats: Stats | None = None  # every instance's totals, as of the last refresh()

    def reconfigure(self, spec: LineSpec, upstream: Upstream | None) -> None:
        """The line's new spec (the admin API), at once: its mode and policy, limits, pacing and,
        with ``upstream``, a new upstream for the calls that start from now on."""
        if self.sessions is not None and spec.admission is not None:
            self.sessions.reconfigure(spec.admission, _signer(spec))
        if isinstance(self.pool.upstream, PullUpstream):
            self.pool.upstream.max_receive_count = spec.max_receive_count
            upstream = None  # its board and its jobs stay
        self.service.reconfigure(spec)
        if upstream is not None:
            self.service.upstream_kind = upstream.kind
        self.pool.reconfigure(spec.settings, upstream or self.pool.upstream)

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
        return self.service.spec

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

    def fair_shares(self) -> dict[str, Any] | None:
        return self.service.line.shares.snapshot() if self.spec.fairness == "fair" else None


class LineWatcher(Protocol):
    def check(self, queue_size: int, problems: list[str]) -> None: ...


def _watching(watcher: LineWatcher, line: Line, pool: WorkerPool) -> Callable[[], None]:
    return lambda: watcher.check(line.peek().size, pool.problems())


@dataclass
class _LineParts:
    """What a line is made of before its service: in this process, or shared through Redis."""

    line: MemoryLine | RedisLine
    places: Places
    sessions: Sessions | None = None
    tally: RedisTally | None = None
    answers: RedisAnswers | None = None
    redis: aioredis.Redis | None = None


async def open_queue(
    stack: AsyncExitStack,
    settings: Settings,
    upstream: Upstream,
    log: RequestLog | None,
    *,
    spec: LineSpec | None = None,
    redis: aioredis.Redis | None = None,
    metrics: Metrics | None = None,
    listeners: Sequence[RequestListener] = (),
    watchers: Sequence[LineWatcher] = (),
) -> Queue:
    """Build and start one line (``spec``, by default the ``guest`` line of ``settings``); ``stack``
    stops it (drains the service, stops the workers). ``redis`` and ``metrics`` may be shared by
    every line of the process; ``listeners`` hear its requests too (webhooks, a simulation), and
    ``watchers`` look at it after every positions tick (webhooks' thresholds)."""
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
        parts = await _shared_line(stack, gate, log, redis)
    else:
        if settings.resolved_upstream_kind == "pull":
            upstream = _pull(spec, MemoryJobBoard(spec.name))
        parts = _memory_line(stack, gate)
    return await _start(stack, gate, parts, upstream, log, metrics, listeners, watchers)


def _memory_line(stack: AsyncExitStack, gate: Gate) -> _LineParts:
    """The line and pacer in this process (no GUEST_REDIS_URL)."""
    spec = gate.spec
    settings = spec.settings
    line = MemoryLine(
        max_size=settings.max_queue_size,
        max_concurrent=settings.max_concurrent_requests,
        interval_s=settings.upstream_interval_s,
        max_hold_s=settings.upstream_max_hold_s,
        release_per_minute=spec.release_per_minute,
        max_starvation_s=spec.max_starvation_s,
        starts_allowed=gate.starts_allowed,
    )
    stack.push_async_callback(line.close)
    sessions = None
    if spec.admission is not None:
        sessions = Sessions(spec.name, spec.admission, _signer(spec), MemorySessions(line))
        stack.push_async_callback(sessions.close)
    return _LineParts(line, LocalPlaces(), sessions)


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


async def _shared_line(stack: AsyncExitStack, gate: Gate, log: RequestLog | None, redis: aioredis.Redis) -> _LineParts:
    """The line, pacer and guests' places on Redis (GUEST_REDIS_URL), shared with other instances."""
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
        starts_allowed=gate.starts_allowed,
    )
    await line.register({"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time()})
    stack.push_async_callback(line.close)
    sessions = None
    if spec.admission is not None:
        store = RedisSessions(redis, line)
        store.start()
        line.on_forgotten.append(store.give_back)  # before the window closes: no slot given twice
        sessions = Sessions(spec.name, spec.admission, _signer(spec), store)
        stack.push_async_callback(sessions.close)
    return _LineParts(
        line,
        RedisPlaces(redis, line.keys, instance_id),
        sessions,
        tally=RedisTally(redis, line.keys, settings.history_size),
        answers=RedisAnswers(redis, line.keys, settings.cache_ttl_s) if settings.cache_size > 0 else None,
        redis=redis,
    )


async def _start(
    stack: AsyncExitStack,
    gate: Gate,
    parts: _LineParts,
    upstream: Upstream,
    log: RequestLog | None,
    metrics: Metrics,
    extra_listeners: Sequence[RequestListener],
    watchers: Sequence[LineWatcher],
) -> Queue:
    """The line's service, workers and hooks, put together in one order, then started."""
    spec, line, sessions = gate.spec, parts.line, parts.sessions
    settings = spec.settings
    board = upstream.board if isinstance(upstream, PullUpstream) else None
    stats, timing = Stats(), metrics.timing(spec.name)
    listeners: list[RequestListener] = [stats, *([parts.tally] if parts.tally else []), timing]
    if log is not None:
        listeners.append(log.for_line(spec.name))
    listeners += extra_listeners
    notice = gate.notice if board is None else with_worker_notice(board, gate.notice)
    core = Core(
        gate,
        line,
        line,
        parts.places,
        listeners,
        notice,
        stats=stats,
        shared_answers=parts.answers,
        sessions=sessions,
    )
    endings = Endings(core)
    attendance = Attendance(core, endings)
    sink: FlightSink = endings
    relay: FlightRelay | None = None
    follower: FlightFollower | None = None
    if isinstance(line, RedisLine):
        assert parts.redis is not None and isinstance(parts.places, RedisPlaces)
        running = line.running
        follower = FlightFollower(
            parts.redis,
            line.keys,
            parts.places.instance_id,
            endings,
            core.flights,
            core.positions,
            running,
            attendance.release,
        )
        relay = FlightRelay(parts.redis, line, parts.places, follower, running, lambda: core.settings.reconnect_grace_s)
        sink = relay
    handover = Handover(core, endings, attendance, follower.follow) if follower else Handover(core, endings, attendance)
    # The line's hooks, fixed here before anything starts.
    if isinstance(line, RedisLine):
        assert relay is not None and follower is not None
        line.on_rejoined.append(handover.rejoin)
        line.on_forgotten += [handover.give_back, relay.give_back]
        line.on_reordered.append(core.positions.kick)
        core.positions.on_view.append(follower.catch_up_started)
    else:
        line.on_moved = core.positions.moved
    if sessions is not None:
        sessions.on_ended.append(core.positions.estimator.record)  # a slot is held a session long
    pool = WorkerPool(settings, line, line, upstream, sink, on_paced=timing.paced, admitter=sessions)
    core.positions.on_view += [_watching(watcher, line, pool) for watcher in watchers]
    health = [pool.problems, *([log.problems] if log is not None else [])]
    service = QueueService(
        core,
        endings,
        attendance,
        handover,
        tally=parts.tally,
        upstream_kind="admission" if sessions is not None else upstream.kind,
        on_drain=[*([board.stop_receiving] if board else []), pool.drain],  # open long polls end at once
        busy=[lambda: bool(pool.active)],
        health_checks=[*([worker_problems(board)] if board else []), *health],
    )
    queue = Queue(service, log, pool, metrics, QueueViews(service, sessions), sessions, board)
    if board is not None:
        stack.push_async_callback(board.close)
    metrics.add(spec.name, queue)
    stack.callback(metrics.remove, spec.name)
    if relay is not None and follower is not None:
        follower.start()
        stack.push_async_callback(follower.stop)  # runs after relay.stop: it hears on while the last events go
        relay.start()
        stack.push_async_callback(relay.stop)
    stack.push_async_callback(pool.stop)
    await service.start()
    pool.start()
    if settings.resolved_upstream_kind in ("http", "openai") and spec.upstream_trusted:
        pool.probe(settings.upstream_url, spec.name)  # a tenant's address is not probed unasked
    stack.push_async_callback(service.stop)
    return queue


@asynccontextmanager
async def run_queue(settings: Settings, upstream: Upstream, log: RequestLog | None = None) -> AsyncIterator[Queue]:
    """The queue without the web layer (benchmarks, embedding): started, then drained and stopped."""
    async with AsyncExitStack() as stack:
        yield await open_queue(stack, settings, upstream, log)
