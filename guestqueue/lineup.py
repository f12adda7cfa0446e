"""The named lines this process serves, each one running queue (runtime.py).

Lines open at start-up (from ``GUEST_CONFIG``, or the one ``guest`` line) and
at run time (the admin API); each has an exit stack of its own, so one line can
be closed (drained: its guests hear their terminal events) while the others
run on. They share the process's HTTP client, Redis client, request log and
metrics registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack

import httpx
import redis.asyncio as aioredis

from .errors import UnknownLine
from .linespec import DEFAULT_LINE, LineSpec
from .metrics import Metrics
from .requestlog import RequestLog
from .runtime import Queue, open_queue
from .upstream import Workflow, make_upstream
from .webhooks import EventStream, LineWebhooks, Outbox

logger = logging.getLogger("guestqueue.lineup")
UPSTREAM_FIELDS = (
    "upstream_url",
    "upstream_kind",
    "upstream_model",
    "upstream_api_key",
    "upstream_allowed_parameters",
    "upstream_messages",
    "upstream_system_prompt",
    "max_answer_bytes",
)
# Run for each line opened, with the line's own exit stack (e.g. the web layer's status monitor).
OpenHook = Callable[[Queue, AsyncExitStack], Awaitable[None]]


class Lineup:
    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        log: RequestLog | None,
        redis: aioredis.Redis | None = None,
        workflow: Workflow | None = None,
        outbox: Outbox | None = None,
        guarded: httpx.AsyncClient | None = None,
    ) -> None:
        self._client = client
        self._guarded = guarded or client  # for upstream URLs tenants set (outbound.py)
        self._outbox = outbox  # the webhooks' sender (webhooks.py), shared by every line
        self.stream: EventStream | None = None  # with Redis: every line's events in one stream
        self._webhooks: dict[str, LineWebhooks] = {}
        self._log = log
        self._redis = redis
        self._workflow = workflow  # GuestQueue(workflow=...): the guest line's upstream
        self.metrics = Metrics(log)
        if outbox is not None:
            self.metrics.webhook_results = outbox.results  # the same dict: counted once, read at scrape
            outbox.on_attempt.append(self.metrics.webhook_attempt)
        self.queues: dict[str, Queue] = {}
        self._stacks: dict[str, AsyncExitStack] = {}
        self._lock = asyncio.Lock()  # one line opened or closed at a time
        self._syncing = asyncio.Lock()
        self.on_open: list[OpenHook] = []
        self.problems: dict[str, str] = {}  # kept lines that cannot open or parse -> why (/health)

    def __repr__(self) -> str:
        return f"Lineup(lines={sorted(self.queues)})"

    def __iter__(self) -> Iterator[Queue]:
        return iter(list(self.queues.values()))

    def __contains__(self, name: object) -> bool:
        return name in self.queues

    def get(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise UnknownLine(f"There is no line named {name!r}.")
        return queue

    async def open(self, spec: LineSpec) -> Queue:
        """Start ``spec``'s line (replacing nothing: close a line of the same name first)."""
        async with self._lock:
            if spec.name in self.queues:
                raise ValueError(f"line {spec.name!r} is already open")
            stack = AsyncExitStack()
            try:
                workflow = self._workflow if spec.name == DEFAULT_LINE else None
                upstream = make_upstream(spec.settings, self._client_for(spec), workflow)
                webhooks = LineWebhooks(self._outbox, spec, self.stream) if self._outbox is not None else None
                if webhooks is not None:
                    self._webhooks[spec.name] = webhooks
                    stack.callback(self._webhooks.pop, spec.name, None)
                queue = await open_queue(
                    stack,
                    spec.settings,
                    upstream,
                    self._log,
                    spec=spec,
                    redis=self._redis,
                    metrics=self.metrics,
                    listeners=[webhooks] if webhooks is not None else [],
                    watchers=[webhooks] if webhooks is not None else [],
                )
                for hook in self.on_open:
                    await hook(queue, stack)
            except BaseException:
                await stack.aclose()
                raise
            self.queues[spec.name], self._stacks[spec.name] = queue, stack
            return queue

    async def open_or_report(self, spec: LineSpec) -> Queue | None:
        """Open a line kept from the admin API; one that cannot open (an import that fails, a port
        it cannot bind) is logged in one line and noted in ``problems``, and the others run."""
        try:
            queue = await self.open(spec)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            logger.error("line %s cannot open, it is not served: %s", spec.name, why)
            self.problems[spec.name] = why
            return None
        self.problems.pop(spec.name, None)
        return queue

    async def sync(self, specs: Mapping[str, LineSpec], unusable: Mapping[str, str] | None = None) -> None:
        """Make the open lines ``specs``: open the new, close the gone, apply the changed (at once,
        keeping every waiting guest's place). One sync at a time: two admin calls at once (or one
        and a reload from Redis) would otherwise both open the same new line. ``unusable``: the
        kept lines that do not parse, with why (shown in /health until they are fixed)."""
        async with self._syncing:
            self.problems = {name: why for name, why in self.problems.items() if name in specs}
            self.problems.update(unusable or {})
            for name in [name for name in self.queues if name not in specs]:
                await self.close(name)
            for name, spec in specs.items():
                queue = self.queues.get(name)
                try:
                    if queue is None:
                        await self.open_or_report(spec)
                    elif _kind(queue.spec) != _kind(spec):
                        # A line becoming a waiting room or a pull line, or ceasing to be one, is a new line.
                        await self.close(name)
                        await self.open_or_report(spec)
                    elif queue.spec != spec:
                        if name in self._webhooks:
                            self._webhooks[name].spec = spec
                        new, old = spec.settings, queue.spec.settings
                        changed = (
                            any(getattr(new, f) != getattr(old, f) for f in UPSTREAM_FIELDS)
                            or spec.upstream_trusted != queue.spec.upstream_trusted
                        )
                        queue.reconfigure(spec, make_upstream(new, self._client_for(spec), None) if changed else None)
                except Exception as exc:  # one line that cannot change leaves the others running
                    logger.error("line %s could not be changed: %s", name, f"{type(exc).__name__}: {exc}"[:300])

    def _client_for(self, spec: LineSpec) -> httpx.AsyncClient:
        return self._client if spec.upstream_trusted else self._guarded

    async def close(self, name: str) -> None:
        """Drain and stop one line (its waiting guests hear ``shutdown``)."""
        async with self._lock:
            self.queues.pop(name, None)
            stack = self._stacks.pop(name, None)
        if stack is not None:
            await stack.aclose()

    def begin_shutdown(self) -> None:
        for queue in self:
            queue.service.begin_shutdown()

    async def drain(self) -> None:
        """Every line drains at once (each within its grace)."""
        await asyncio.gather(*(queue.service.stop() for queue in self))

    async def aclose(self) -> None:
        """Close every line, the last opened first; errors are collected, the first re-raised."""
        errors: list[BaseException] = []
        for name in reversed(list(self._stacks)):
            try:
                await self.close(name)
            except Exception as exc:  # the other lines still close
                errors.append(exc)
        if errors:
            raise errors[0]


def _kind(spec: LineSpec) -> tuple[bool, bool]:
    """What a line is built as: a waiting room? a pull line?"""
    return spec.admission is not None, spec.settings.resolved_upstream_kind == "pull"
