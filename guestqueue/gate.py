"""A line's mode as it applies now, and what it lets through.

Modes (as in Cloudflare's waiting room), each set on the line or by a scheduled window:

- ``open``: guests join and start as the line's limits allow;
- ``paused``: guests join and wait, nothing starts (maintenance of the upstream);
- ``queue_all``: the same, and every waiting guest hears the line's message;
- ``reject``: new guests get 503 ``line_closed`` with the message; those already
  in line are still served;
- ``admission``: open, and the line is a waiting room (waitingroom/sessions.py); its scheduled
  windows hold or close it like any other line.

Admission by predicted wait: with ``max_predicted_wait_sec``, a guest whose
estimated wait at the back of the line exceeds it gets 429 ``wait_too_long``
with a Retry-After of the excess.

Every instance reads its line's spec (kept in step through Redis by the
catalog), and schedules are read against each instance's clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from .errors import LineClosed, WaitTooLong
from .linespec import LineSpec

HELD_MODES = ("paused", "queue_all")
OPEN_MODES = ("open", "admission")  # an admission line is open; it admits instead of calling
DEFAULT_MESSAGES = {
    "reject": "This line is closed right now. Please come back later.",
    "queue_all": "Everyone waits for now; the line will start moving soon.",
    "paused": "The line is paused for a moment; you keep your place.",
}


class Gate:
    def __init__(self, spec: LineSpec, *, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self._clock = clock

    def __repr__(self) -> str:
        return f"Gate(line={self.spec.name!r}, mode={self.mode()!r})"

    def mode(self) -> str:
        return self.spec.mode_at(self._clock())

    def starts_allowed(self) -> bool:
        return self.mode() not in HELD_MODES

    def message(self, mode: str | None = None) -> str:
        mode = mode or self.mode()
        return self.spec.message or DEFAULT_MESSAGES.get(mode, "")

    def notice(self) -> dict[str, Any]:
        """What a waiting guest's ``queued`` events add while the line is not open."""
        mode = self.mode()
        if mode in OPEN_MODES:
            return {}
        return {"line_mode": mode, "message": self.message(mode)}

    def check_open(self) -> None:
        """Raise LineClosed while the mode is reject."""
        if self.mode() == "reject":
            raise LineClosed(self.message("reject"))

    def check_wait(self, estimate_s: Callable[[], float], own_limit_s: float | None = None) -> None:
        """Raise WaitTooLong when a newcomer's estimated wait exceeds ``max_predicted_wait_sec``, or
        the guest's own ``own_limit_s`` (its ``max_wait_sec``)."""
        line_limit = self.spec.max_predicted_wait_s
        limits = [limit for limit in (line_limit if line_limit > 0 else None, own_limit_s) if limit is not None]
        if not limits or self.mode() not in OPEN_MODES:  # a held line has no estimate worth refusing on
            return
        limit, estimate = min(limits), estimate_s()
        if estimate > limit:
            whose = "you can wait" if limit == own_limit_s else "this line's limit"
            refusal = WaitTooLong(
                f"The wait is about {math.ceil(estimate)} s, more than the {limit:g} s {whose}. "
                "Please try again later.",
                retry_after_s=max(1, math.ceil(estimate - limit)),
            )
            refusal.guests_own = limit == own_limit_s
            raise refusal
