"""The running queue, put together: which line, which pacer, who listens, in what order things
stop. The web layer's lifespan calls :func:`open_queue` inside its ``AsyncExitStack``.

Without ``GUEST_REDIS_URL`` the line and pacer are one in-process
:class:`~guestqueue.lines.memory.MemoryLine`; with it, a shared
:class:`~guestqueue.lines.redis.RedisLine` (see that module for the design).
Everything else is the same code either way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from .config import Settings
from .history import Stats
from .lines.memory import MemoryLine
from .metrics import Metrics
from .service import QueueService
from .store import RequestLog
from .upstream import Upstream
from .workers import WorkerPool


@dataclass
class Queue:
    """What the web layer serves: the service, and the parts it reports on."""

    service: QueueService
    log: RequestLog | None
    pool: WorkerPool = field(init=False)
    metrics: Metrics = field(init=False)

    # -- the MetricsSource (metrics.py) ----------------------------------------------

    @property
    def stats(self) -> Stats:
        return self.service.stats

    @property
    def upstream_calls(self) -> Counter[str]:
        return self.pool.upstream_calls

    def queue_size(self) -> int:
        return self.service.line.peek().size

    def active_requests(self) -> int:
        return self.service.line.peek().active


async def open_queue(stack: AsyncExitStack, settings: Settings, upstream: Upstream, log: RequestLog | None) -> Queue:
    """Build and start the queue; ``stack`` stops it (drains the service, stops the workers)."""
    line = MemoryLine(
        max_size=settings.max_queue_size, max_concurrent=settings.max_concurrent_requests,
        interval_s=settings.upstream_interval_s, max_hold_s=settings.upstream_max_hold_s,
    )
    service = QueueService(settings, line, line, upstream_kind=upstream.kind)
    line.on_moved = service.positions.moved
    queue = Queue(service, log)
    queue.metrics = Metrics(queue)
    queue.pool = WorkerPool(settings, line, line, upstream, service, on_paced=queue.metrics.paced)
    service.listeners.append(queue.metrics)
    service.health_checks.append(queue.pool.problems)
    if log is not None:
        service.listeners.append(log)
        service.health_checks.append(log.problems)
    stack.push_async_callback(line.close)
    stack.push_async_callback(queue.pool.stop)
    await service.start()
    queue.pool.start()
    stack.push_async_callback(service.stop)
    return queue


@asynccontextmanager
async def run_queue(settings: Settings, upstream: Upstream, log: RequestLog | None = None) -> AsyncIterator[Queue]:
    """The queue without the web layer (benchmarks, embedding): started, then drained and stopped."""
    async with AsyncExitStack() as stack:
        yield await open_queue(stack, settings, upstream, log)
