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

A running call is expected to take what the recent calls that ran longer than it had left
(a call that already ran long tends to run longer than the average says).

With several slots, that schedule keeps the slots in step (each takes the mean hold), which is
right for fixed calls only: random calls end at random times, so the first start is the earliest of
the running calls' ends, which comes sooner than the least of their expected ends, and from then on
starts come about one every hold / slots. The estimate leans from the schedule to that line as far
as the holds vary (their standard deviation over their mean, at most 1, as exponential calls).
The schedule is made at each start and view; a guest who asks later is that much nearer each start.

The range (p10 to p90): the p-th start comes after about p / slots holds one after another, so its
spread combines the holds' standard deviation times sqrt(p / slots) with the uncertainty of their
mean (its standard error times p / slots: with few calls measured, it dominates); normal quantiles
of that, never narrower than ±10 % of the estimate (calls vary even when the recent ones did not),
never below what the pacing alone allows. With several slots sqrt(p / slots) is wider than a
renewal model's sqrt(p) / slots, a margin for what that model leaves out (calls ending together,
skew); as it is, the simulator puts 80-91 % of guests inside on lognormal calls (§18 and §20
of docs/benchmarks.md).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable

from . import clock

DEFAULT_PROCESSING_S = 5.0  # until the first real measurement
# An estimate goes into JSON (`queued` events) and Retry-After headers: it must be a
# finite number whatever the inputs, or one bad value (inf) breaks every later answer.
MAX_ESTIMATE_S = 86_400.0
Z_P90 = 1.2816  # the standard normal's 90th percentile: a p10-p90 range is the mean ± Z_P90 sd
MIN_RELATIVE_SPREAD = 0.1
DEFAULT_CV = 0.5  # the holds' spread relative to their mean, until two calls were measured
UNKNOWN_MEAN_SE = 0.5  # ... and their mean is a guess then: ±50 % (one sd)
FLUID_MAX_SLOTS = 64  # more slots than this: the schedule alone (see _reset)


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
        self._ranges: list[tuple[float, float]] = []  # (p10, p90) of positions 1..n
        self._hold_s = DEFAULT_PROCESSING_S
        self._hold_sd = DEFAULT_CV * DEFAULT_PROCESSING_S
        self._mean_se = UNKNOWN_MEAN_SE * DEFAULT_PROCESSING_S
        self._valid = False
        self._recorded = 0
        self._first_start = self._heap_last = 0.0  # the pacing's first start; the schedule's last
        self._randomness = 0.0  # of the holds (see _reset)
        self._reset_at = 0.0  # when the schedule was made: its starts count from then
        self._fluid_first = 0.0
        self._hold_key: tuple[int, int, float] | None = None  # what _held was computed for
        self._held = (DEFAULT_PROCESSING_S, DEFAULT_CV * DEFAULT_PROCESSING_S)
        self._sorted_key = -1
        self._sorted: list[float] = []  # the recent calls, shortest first
        self._tail_sums: list[float] = []  # [i]: the sum of _sorted[i:]

    @property
    def avg_processing_s(self) -> float:
        return sum(self._durations) / len(self._durations) if self._durations else DEFAULT_PROCESSING_S

    def record(self, processing_s: float) -> None:
        self._durations.append(processing_s)
        self._recorded += 1
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
        estimate = max(0.0, self._starts[position - 1] - self._age_s())
        return min(estimate, MAX_ESTIMATE_S) if math.isfinite(estimate) else MAX_ESTIMATE_S

    def range_s(self, position: int) -> tuple[float, float]:
        """The p10 and p90 of the wait of the guest at ``position`` (see the module's docstring)."""
        if position < 1:
            return 0.0, 0.0
        estimate = self.estimate_s(position)  # brings the schedule (and the ranges' inputs) up to date
        while len(self._ranges) < position:
            p = len(self._ranges) + 1
            mean = self._starts[p - 1]
            rounds = p / max(1, self.concurrency)  # holds, one after another, before its start
            # The holds vary (sqrt(p) of them add up), and their mean is known from a few calls only
            # (its standard error counts once per round).
            spread = Z_P90 * math.hypot(self._hold_sd * math.sqrt(rounds), rounds * self._mean_se)
            paced = self._first_start + (p - 1) * self.interval_s  # no start comes sooner
            low = max(min(mean - spread, mean * (1 - MIN_RELATIVE_SPREAD)), min(paced, mean), 0.0)
            high = max(mean + spread, mean * (1 + MIN_RELATIVE_SPREAD))
            self._ranges.append((low, high))
        age_s = self._age_s()
        low, high = (max(0.0, bound - age_s) for bound in self._ranges[position - 1])
        high = min(max(high, estimate), MAX_ESTIMATE_S) if math.isfinite(high) else MAX_ESTIMATE_S
        return min(low, estimate), high

    def _age_s(self) -> float:
        """How long ago the schedule was made (whole milliseconds): a guest who asks later is that
        much nearer every start (the schedule is made again at each start and view, not at each
        question; estimates were ~10 % long on a busy line of fixed calls, docs/benchmarks.md §20)."""
        return math.floor((clock.monotonic() - self._reset_at) * 1000) / 1000

    def _reset(self) -> None:
        self._reset_at = clock.monotonic()
        elapsed, pacing_delay_s = self._snapshot()
        busy = self._busy(elapsed[: self.concurrency])
        self._slots = busy + [0.0] * (self.concurrency - len(busy))
        heapq.heapify(self._slots)
        self._starts = []
        self._ranges = []
        self._first_start = self._heap_last = pacing_delay_s
        self._hold_s, self._hold_sd = self._hold()
        known = len(self._durations)
        self._mean_se = self._hold_sd / math.sqrt(known) if known >= 2 else UNKNOWN_MEAN_SE * self._hold_s
        # How random the holds are (0: fixed calls, 1: as random as exponential ones), and what the
        # line looks like when they are: the first end is the earliest of the running calls, and
        # from then on a start every hold / slots (see _extend).
        # (Not with many slots, e.g. a waiting room's thousands of sessions: there the first end is
        # any moment and a start comes every hold / slots either way, and this runs at every start.)
        varies = self._hold_s > 0 and self.concurrency <= FLUID_MAX_SLOTS
        self._randomness = min(1.0, self._hold_sd / self._hold_s) if varies else 0.0
        first = pacing_delay_s
        if self._randomness > 0 and len(busy) >= self.concurrency and busy:
            soonest = min(busy)
            earliest = 1 / sum(1 / max(r, 1e-3) for r in busy)  # of exponential ends: 1 / (sum of rates)
            first = max(first, soonest + self._randomness * (earliest - soonest))
        self._fluid_first = first
        self._valid = True

    def _busy(self, elapsed: list[float]) -> list[float]:
        """How much longer each running call takes (:meth:`_remaining`), in one pass: a waiting room
        has thousands running, and this runs at every start."""
        avg = self.avg_processing_s
        if not self._durations:  # nothing measured: the default, and at least a little more
            return [max(avg - e, 0.1 * avg) for e in elapsed]
        if self._sorted_key != self._recorded:  # once per recorded call, not per running call
            self._sorted = sorted(self._durations)
            self._tail_sums = list(itertools.accumulate(reversed(self._sorted)))[::-1]
            self._sorted_key = self._recorded
        shortest = self._sorted[0]  # younger than every recent call: all of them ran longer
        return [avg - e if e < shortest else self._remaining(e) for e in elapsed]

    def _remaining(self, elapsed_s: float) -> float:
        """How much longer a call running for ``elapsed_s`` takes, on average: of the recent calls
        that ran longer, the mean of what they had left (a call that already ran long tends to run
        longer than the average says); past all of them, half the average more."""
        longer = bisect.bisect_right(self._sorted, elapsed_s)
        count = len(self._sorted) - longer
        return (self._tail_sums[longer] - count * elapsed_s) / count if count else 0.5 * self.avg_processing_s

    def _hold(self) -> tuple[float, float]:
        """How long a start keeps its slot from the next one, on average (see the module's docstring):
        its call, or the slots * interval until that slot's next paced turn, whichever is longer;
        and the standard deviation of that."""
        key = (self._recorded, self.concurrency, self.interval_s)
        if self._hold_key != key:  # once per recorded call: estimates are reset at every start
            turn_s = self.concurrency * self.interval_s
            holds = [max(d, turn_s) for d in self._durations] or [max(DEFAULT_PROCESSING_S, turn_s)]
            mean = sum(holds) / len(holds)
            sd = math.sqrt(sum((h - mean) ** 2 for h in holds) / len(holds)) if len(holds) >= 2 else DEFAULT_CV * mean
            self._hold_key, self._held = key, (mean, sd)
        return self._held

    def _extend(self) -> None:
        """The next position's start: the schedule of slots that each take the mean hold, which is
        exact for fixed calls; the more the holds vary, the more it leans to the line random holds
        make (a start every hold / slots after the earliest end), since slots that end at random
        times do not stay in step as that schedule has them (it put the starts of several slots
        ~20 % late on exponential calls, docs/benchmarks.md section 18)."""
        free_at = heapq.heappop(self._slots)
        if self._starts:
            start = max(free_at, self._heap_last + self.interval_s)
        else:
            start = max(free_at, self._first_start)
        self._heap_last = start
        heapq.heappush(self._slots, start + self._hold_s)
        before = len(self._starts)
        gap = max(self._hold_s / max(1, self.concurrency), self.interval_s)
        fluid = max(self._fluid_first + before * gap, self._first_start + before * self.interval_s)
        self._starts.append(start + self._randomness * (fluid - start))
