"""How long the machine kept this process off the CPU, so a timing check can tell our lateness
from the operating system's.

A thread sleeps ``tick_s`` at a time and notes how much later than asked it woke. It holds no
lock of ours and needs the GIL only for a moment, so its lateness is the scheduler's (the whole
suite runs five processes on two cores), not our event loop's: a loop that blocks does not
delay it by more than Python's switch interval (5 ms), and so stays caught by the checks.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType


class StallWatch:
    def __init__(self, tick_s: float = 0.02) -> None:
        self.tick_s = tick_s
        self._stalls: list[tuple[float, float]] = []  # (woke at, wall clock; seconds late)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            asked = time.monotonic() + self.tick_s
            time.sleep(self.tick_s)
            late = time.monotonic() - asked
            if late > self.tick_s:  # a few ms is ordinary; note only what is more
                self._stalls.append((time.time(), late))

    def between(self, start: float, end: float) -> float:
        """Seconds this process lost to stalls that overlap ``[start, end]`` (wall clock)."""
        return sum(late for woke, late in list(self._stalls) if woke >= start and woke - late <= end)

    @property
    def worst(self) -> float:
        return max((late for _, late in self._stalls), default=0.0)
