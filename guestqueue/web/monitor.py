"""What status monitors read: the last ten minutes of per-second samples, and a live status stream.

``GET /queue/status/stream`` is an SSE stream of the ``/queue/status`` object,
once a second and at once when ``queue_size`` or ``active_requests`` changes.
It is sse-starlette's ``EventSourceResponse``: a handful of monitor
connections, so its per-connection cost (the reason guests get our own
``TicketStream``, docs/benchmarks.md) does not matter here, and its ping, send
timeout and disconnect handling are what a monitor stream needs. On shutdown
the stream sends the final status and ends.

``GET /queue/status/samples`` gives what the dashboard's chart starts from::

    {"interval_sec": 1, "samples": [{"t": 1732300000.0, "queue_size": 4, "active_requests": 3,
                                     "completed_requests": 120}, ...]}   # oldest first
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.responses import Response

SAMPLE_EVERY_S = 1.0
SAMPLES_KEPT = 600  # ten minutes
MIN_STREAM_GAP_S = 0.1  # under churn, at most ten status events a second per monitor


class StatusSource(Protocol):
    """The running queue, as far as a monitor needs it."""

    @property
    def accepting(self) -> bool: ...

    def snapshot(self) -> dict[str, Any]: ...

    async def status_changed(self) -> None: ...


class StatusMonitor:
    """Samples ``source.snapshot()`` once a second (started and stopped with the app)."""

    def __init__(self, source: StatusSource, *, ping_s: float, send_timeout_s: float) -> None:
        self._source = source
        self._ping_s = ping_s
        self._send_timeout_s = send_timeout_s
        self._samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES_KEPT)
        self._sampler: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"StatusMonitor(samples={len(self._samples)})"

    def start(self) -> None:
        self._sampler = asyncio.create_task(self._sample(), name="guestqueue-status-samples")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)

    def samples(self) -> dict[str, Any]:
        return {"interval_sec": SAMPLE_EVERY_S, "samples": list(self._samples)}

    def stream(self) -> Response:
        # Imported here: sse-starlette (0.05 s of every start) serves only this monitoring stream.
        from sse_starlette import EventSourceResponse

        return EventSourceResponse(
            self._events(),
            ping=self._ping_s or None,
            send_timeout=self._send_timeout_s,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            status = self._source.snapshot()
            self._samples.append(
                {
                    "t": round(time.time(), 3),
                    "queue_size": status["queue_size"],
                    "active_requests": status["active_requests"],
                    "completed_requests": status["completed_requests"],
                }
            )
            due = max(due + SAMPLE_EVERY_S, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _events(self) -> AsyncIterator[dict[str, str]]:
        source, loop = self._source, asyncio.get_running_loop()
        while True:
            status = source.snapshot()
            sent = (status["queue_size"], status["active_requests"])
            yield {"event": "status", "data": json.dumps(status, separators=(",", ":"))}
            if not source.accepting:
                return  # shutting down: that was the last word
            next_regular = loop.time() + SAMPLE_EVERY_S
            await asyncio.sleep(MIN_STREAM_GAP_S)
            # Until the next regular status: at once when the counts differ from those sent.
            while source.accepting and self._counts() == sent and (remaining := next_regular - loop.time()) > 0:
                try:
                    async with asyncio.timeout(remaining):
                        await source.status_changed()
                except TimeoutError:
                    break

    def _counts(self) -> tuple[int, int]:
        status = self._source.snapshot()
        return status["queue_size"], status["active_requests"]
