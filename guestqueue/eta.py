"""Estimated wait: when will the guest at position p start?

A small simulation, run once per change for the whole line rather than once
per waiter: slots free up as running jobs finish (each is expected to take the
moving average of recent processing times), tickets take slots in line order,
and no start comes sooner than the pacing limiter allows. A start keeps its
slot from the next for the mean of max(call, slots * interval) over the recent
calls, not for max(mean call, slots * interval): calls that vary around the
pacing make the line slower than their mean says (``guestqueue simulate``
measured estimates 9 % short with one slot, 10 s pacing and calls of 8.4 s on
average; docs/benchmarks.md §10). Positions asked for
beyond what was simulated extend the same schedule, so a burst of admissions
costs O(1) each.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable

DEFAULT_PROCESSING_S = 5.0  # until the first real measurement
# An estimate goes into JSON (`queued` events) and Retry-After headers: it must be a
# finite number whatever the inputs, or one bad value (inf) breaks every later answer.
MAX_ESTIMATE_S = 86_400.0


class WaitEstimator:
    def __init__(
        self,
        concurrency: int,
        interval_s: float,
        snapshot: Callable[[], tuple[list[float], float]],
        *,
        window: int = 20,
    ) -> None:
        """``snapshot()`` gives (elapsed seconds of each running job, seconds until the limiter's next start)."""
        self.concurrency = concurrency
        self.interval_s = interval_s
        self._snapshot = snapshot
        self._durations: deque[float] = deque(maxlen=window)
        self._starts: list[float] = []  # expected start, seconds from the snapshot, of positions 1..n
        self._slots: list[float] = []
        self._hold_s = DEFAULT_PROCESSING_S
        self._valid = False

    @property
    def avg_processing_s(self) -> float:
        return sum(self._durations) / len(self._durations) if self._durations else DEFAULT_PROCESSING_S

    def record(self, processing_s: float) -> None:
        self._durations.append(processing_s)
        self._valid = False

    def invalidate(self) -> None:
        self._valid = False

    def estimate_s(self, position: int) -> float:
        if position < 1:
            return 0.0
        if not self._valid:
            self._reset()
        while len(self._starts) < position:
            self._extend()
        estimate = self._starts[position - 1]
        return min(estimate, MAX_ESTIMATE_S) if math.isfinite(estimate) else MAX_ESTIMATE_S

    def _reset(self) -> None:
        elapsed, pacing_delay_s = self._snapshot()
        avg = self.avg_processing_s
        # A running job is expected to end at the average, but at least a little later than now.
        busy = [max(avg - e, 0.1 * avg) for e in elapsed[: self.concurrency]]
        self._slots = busy + [0.0] * (self.concurrency - len(busy))
        heapq.heapify(self._slots)
        self._starts = []
        self._first_start = pacing_delay_s
        self._hold_s = self._hold()
        self._valid = True

    def _hold(self) -> float:
        """How long a start keeps its slot from the next one, on average (see the module's docstring):
        its call, or the slots * interval until that slot's next paced turn, whichever is longer."""
        turn_s = self.concurrency * self.interval_s
        if not self._durations:
            return max(DEFAULT_PROCESSING_S, turn_s)
        return sum(max(d, turn_s) for d in self._durations) / len(self._durations)

    def _extend(self) -> None:
        free_at = heapq.heappop(self._slots)
        if self._starts:
            start = max(free_at, self._starts[-1] + self.interval_s)
        else:
            start = max(free_at, self._first_start)
        self._starts.append(start)
        heapq.heappush(self._slots, start + self._hold_s)
