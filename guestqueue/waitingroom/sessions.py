"""An admission line's sessions (a waiting room, seed 004): admitted guests hold the line's slots.

An admission line calls no upstream. When a guest's flight starts (the line's
own slot and pacing rules: ``max_active`` slots, one start every
``process_interval_sec / batch_size``), the worker asks :meth:`Sessions.admit`
for a token (waitingroom/tokens.py) and the guest hears the terminal ``admitted`` event.
The slot then belongs to the session, not to the worker: it is freed when the
protected application completes the session, when its token is revoked, or at
the token's ``exp``. So ``max_active`` is the number of guests inside at once.

In memory the slot stays the memory line's until a timer or a call frees it.
On Redis the slot moves from the line's slots hash to its ``sessions`` sorted
set, scored by ``exp`` (lines/redis/line.py counts the slots of live instances plus
the sessions not yet expired, one ZCOUNT), so sessions outlive the instance
that admitted them, no instance gives a slot twice, and a start costs the same
with ten thousand sessions open as with none.
Ending a session is one script (whichever instance runs it, it ends once);
every instance runs the expiry sweep every half second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ClientLimit, LineUnavailable
from ..lines.memory import MemoryLine
from ..linespec import Admission
from ..tickets import Flight
from .tokens import Grant, InvalidToken, TokenSigner

logger = logging.getLogger("guestqueue.waitingroom.sessions")

ENDINGS = ("completed", "expired", "revoked")
MAX_COUNTED = 1_000  # a client's sessions read to count them (its limit is far below)
SWEEP_EVERY_S = 0.5
ROOM_UNAVAILABLE = "The waiting room is unavailable right now. Please try again shortly."


@dataclass(slots=True)
class _Session:
    request_id: str
    jti: str
    expires_at: float
    flight: Flight
    opened: float  # the loop's clock
    timer: asyncio.TimerHandle | None = None


class SessionStore(Protocol):
    on_ended: Callable[[float], None]  # a session's length, as it ends here

    async def open(self, flight: Flight, grant: Grant) -> bool: ...

    async def end(self, request_id: str, how: str) -> bool: ...

    async def by_jti(self, jti: str) -> str | None: ...

    async def state(self, request_id: str) -> str | None: ...

    def counts(self) -> dict[str, int]: ...

    async def note_client(self, client: str, request_id: str, expires_at: float) -> None: ...

    async def held_by(self, client: str) -> int: ...

    async def close(self) -> None: ...


class Sessions:
    """What the worker pool and the web layer ask of an admission line."""

    def __init__(self, line: str, admission: Admission, signer: TokenSigner, store: SessionStore) -> None:
        self.line, self.admission, self.signer, self._store = line, admission, signer, store
        # Each session's length in seconds as it ends here: how long a slot is held, for the ETA.
        self.on_ended: list[Callable[[float], None]] = []
        store.on_ended = self._ended_after

    def __repr__(self) -> str:
        return f"Sessions(line={self.line!r}, {self._store!r})"

    def reconfigure(self, admission: Admission, signer: TokenSigner) -> None:
        """The line's keys changed (the admin API): new tokens follow them; a new token secret also
        decides what verifies from now on."""
        self.admission, self.signer = admission, signer

    async def admit(self, flight: Flight) -> dict[str, Any]:
        """The flight's guest is in: a token, and the flight's slot is the session's now. Returns the
        ``admitted`` event's payload."""
        grant = self.signer.issue(flight.request.request_id, self.line, self.admission.session_ttl_s)
        if not await self._store.open(flight, grant):
            # The slot is not this instance's any more (its lease ran out meanwhile): no token.
            raise LineUnavailable("The waiting room is unavailable right now. Please try again shortly.")
        return grant.payload(self.admission.redirect_url)

    async def complete(self, request_id: str) -> bool:
        """The guest is done: its slot frees at once. False if it was not an open session."""
        return await self._store.end(request_id, "completed")

    async def revoke(self, jti: str) -> bool:
        """The token is withdrawn: its session ends and its slot frees. False if no open session had it."""
        request_id = await self._store.by_jti(jti)
        return request_id is not None and await self._store.end(request_id, "revoked")

    async def check_client(self, client: str, waiting: int) -> None:
        """Refuse a client whose open sessions and places in line reach ``max_sessions_per_client``:
        an admitted guest still holds a slot, so one address cannot hold them all."""
        limit = self.admission.max_sessions_per_client
        held = waiting + await self._store.held_by(client)
        if held >= limit:
            raise ClientLimit(
                f"You already have {held} place{'s' if held != 1 else ''} in this waiting room or visits open "
                f"(at most {limit}). Finish one, or wait until it ends, before joining again.",
                retry_after_s=max(1, round(min(self.admission.session_ttl_s, 60))),
            )

    def admitted(self, client: str, request_id: str, expires_at: float) -> Awaitable[None]:
        """The guest's own instance notes whose session this is (the limit above counts it)."""
        return self._store.note_client(client, request_id, expires_at)

    def _ended_after(self, seconds: float) -> None:
        for hook in self.on_ended:
            hook(seconds)

    async def state(self, request_id: str) -> str | None:
        """``active``, ``completed``, ``expired``, ``revoked``, or None (never admitted)."""
        return await self._store.state(request_id)

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a good token of an open session; InvalidToken says why not."""
        claims = self.signer.verify(token, self.line)
        state = await self._store.state(claims["sub"])
        if state != "active":
            raise InvalidToken(f"the session is {state or 'unknown'}")
        return claims

    def counts(self) -> dict[str, int]:
        """``sessions_active`` and the totals: admitted, completed, expired, revoked (shared: as of
        the last sweep, at most half a second old)."""
        return self._store.counts()

    async def close(self) -> None:
        await self._store.close()


class MemorySessions:
    """One process: the memory line keeps the slot until :meth:`end` (a call or the timer)."""

    def __init__(self, line: MemoryLine) -> None:
        self._line = line
        self._open: dict[str, _Session] = {}
        self._jtis: dict[str, str] = {}
        self._ended: dict[str, str] = {}  # request id -> how, for verify's answer
        self._totals: Counter[str] = Counter()
        self._clients: dict[str, set[str]] = {}  # client -> request ids of its sessions (pruned when counted)
        self._expiring: set[asyncio.Future[bool]] = set()
        self.on_ended: Callable[[float], None] = lambda seconds: None

    def __repr__(self) -> str:
        return f"MemorySessions(active={len(self._open)}, {dict(self._totals)})"

    async def open(self, flight: Flight, grant: Grant) -> bool:
        loop = asyncio.get_running_loop()
        session = _Session(grant.request_id, grant.jti, grant.expires_at, flight, loop.time())
        delay_s = max(0.0, grant.expires_at - time.time())
        session.timer = loop.call_later(delay_s, self._expire, grant.request_id)
        self._open[grant.request_id], self._jtis[grant.jti] = session, grant.request_id
        self._totals["admitted"] += 1
        return True

    def _expire(self, request_id: str) -> None:
        task = asyncio.ensure_future(self.end(request_id, "expired"))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def end(self, request_id: str, how: str) -> bool:
        session = self._open.pop(request_id, None)
        if session is None:
            return False
        if session.timer is not None:
            session.timer.cancel()
        self._jtis.pop(session.jti, None)
        self._ended[request_id] = how
        if len(self._ended) > 10_000:  # oldest first (dicts keep order)
            del self._ended[next(iter(self._ended))]
        self._totals[how] += 1
        self.on_ended(asyncio.get_running_loop().time() - session.opened)
        await self._line.finish(session.flight)
        return True

    async def by_jti(self, jti: str) -> str | None:
        return self._jtis.get(jti)

    async def state(self, request_id: str) -> str | None:
        return "active" if request_id in self._open else self._ended.get(request_id)

    def counts(self) -> dict[str, int]:
        return {"sessions_active": len(self._open), **{k: self._totals[k] for k in ("admitted", *ENDINGS)}}

    async def note_client(self, client: str, request_id: str, expires_at: float) -> None:
        if request_id in self._open:
            self._clients.setdefault(client, set()).add(request_id)

    async def held_by(self, client: str) -> int:
        mine = self._clients.get(client)
        if not mine:
            return 0
        mine &= self._open.keys()
        if not mine:
            del self._clients[client]
        return len(mine)

    async def close(self) -> None:
        for session in self._open.values():
            if session.timer is not None:
                session.timer.cancel()
