"""Events of one request, their SSE encoding, and the per-request event log.

Each event is encoded once, as standard SSE framing with a single ``data:``
line holding a JSON envelope ``{"event": NAME, "data": PAYLOAD}``. JSON
escapes CR and LF, so no text from a guest or the upstream can start a new
SSE line and forge an event.

The answer chunks of one upstream call are kept once, in a
:class:`SharedAnswer`, however many guests ride the call: each rider's
:class:`EventLog` follows it (its chunk events are numbered in the rider's own
id sequence and made when read), instead of holding its own copy of every chunk.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from typing import Any, TypedDict

QUEUED = "queued"
PROCESSING = "processing"
ANSWER_CHUNK = "answer_chunk"
WORKFLOW_COMPLETE = "workflow_complete"
TIMEOUT = "timeout"
ERROR = "error"
ADMITTED = "admitted"  # an admission line's ending: the guest's token (waitingroom/sessions.py)
RECONNECT = "reconnect"  # not an ending: this instance is stopping, the guest resumes on another
TERMINAL_EVENTS = frozenset({WORKFLOW_COMPLETE, TIMEOUT, ERROR, ADMITTED})

# Events kept per request for replay after a reconnect. A longer answer can
# still be resumed from any recent event id; only very old ids are gone.
DEFAULT_REPLAY_EVENTS = 2048


class Event:
    __slots__ = ("_encoded", "data", "id", "name")

    def __init__(self, id: int, name: str, data: Any) -> None:
        self.id = id
        self.name = name
        self.data = data
        self._encoded: bytes | None = None

    @property
    def terminal(self) -> bool:
        return self.name in TERMINAL_EVENTS

    def envelope(self) -> dict[str, Any]:
        return {"event": self.name, "data": self.data}

    def encode(self) -> bytes:
        """The SSE block for this event, computed once however many readers it has."""
        if self._encoded is None:
            if self.name == QUEUED:
                self._encoded = encode_queued(self.id, self.data)
            elif self.name == RECONNECT:
                # No `id:` line: the guest's Last-Event-ID stays that of the last event it really
                # had, which is where the instance it reconnects to takes the numbering up.
                data = json.dumps(self.envelope(), separators=(",", ":"))
                self._encoded = f"event: {self.name}\ndata: {data}\n\n".encode()
            else:
                self._encoded = encode_sse(self.id, self.name, self.envelope())
        return self._encoded

    def __repr__(self) -> str:
        return f"Event(id={self.id}, name={self.name!r})"


class Place(TypedDict):
    """A ``queued`` event's data as the line's ticker makes it (positions.py)."""

    request_id: str
    queue_position: int
    total_ahead: int
    queue_size: int
    estimated_wait_sec: float
    estimated_wait_range_sec: tuple[float, float]  # p10, p90 (a JSON array)


QUEUED_FIELDS = (
    "request_id",
    "queue_position",
    "total_ahead",
    "queue_size",
    "estimated_wait_sec",
    "estimated_wait_range_sec",
)


def encode_queued(event_id: int, data: dict[str, Any]) -> bytes:
    """``encode_sse`` for a place-in-line update, the hottest event (every waiting guest, every
    second), formatted directly: the same bytes at a sixth of the cost."""
    request_id = data.get("request_id")
    numbers = [data.get(name) for name in QUEUED_FIELDS[1:5]]
    span = data.get("estimated_wait_range_sec")
    if (
        list(data) != list(QUEUED_FIELDS)
        or not isinstance(request_id, str)
        or not (request_id.isascii() and request_id.isalnum())  # nothing JSON would escape
        or not all(_plain_number(n) for n in numbers)
        or not (isinstance(span, list | tuple) and len(span) == 2 and all(_plain_number(n) for n in span))
    ):
        return encode_sse(event_id, QUEUED, {"event": QUEUED, "data": data})
    position, ahead, size, wait = numbers
    low, high = span
    return (
        f'event: queued\nid: {event_id}\ndata: {{"event":"queued","data":{{"request_id":"{request_id}",'
        f'"queue_position":{position},"total_ahead":{ahead},"queue_size":{size},"estimated_wait_sec":{wait},'
        f'"estimated_wait_range_sec":[{low},{high}]}}}}\n\n'
    ).encode()


PLACE = (
    'event: queued\nid: %d\ndata: {"event":"queued","data":{"request_id":"%s","queue_position":%d,'
    '"total_ahead":%d,"queue_size":%d,"estimated_wait_sec":%r,"estimated_wait_range_sec":[%r,%r]}}\n\n'
)


def encode_place(event_id: int, place: Place) -> bytes:
    """``encode_queued`` for a place Positions made (its ints and its finite float are typed, so only
    the id is checked): the same bytes at less than half the cost."""
    request_id = place["request_id"]
    if not (request_id.isascii() and request_id.isalnum()):
        return encode_queued(event_id, dict(place))
    return (
        PLACE
        % (
            event_id,
            request_id,
            place["queue_position"],
            place["total_ahead"],
            place["queue_size"],
            place["estimated_wait_sec"],
            *place["estimated_wait_range_sec"],
        )
    ).encode()


def _plain_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # not bool, NaN or infinity


def encode_sse(event_id: int, name: str, envelope: dict[str, Any]) -> bytes:
    # ensure_ascii also escapes U+2028/U+2029/U+0085, which some line splitters treat as breaks.
    data = json.dumps(envelope, separators=(",", ":"))
    return f"event: {name}\nid: {event_id}\ndata: {data}\n\n".encode()


class SharedAnswer:
    """The chunks of one upstream answer, kept once for every guest riding it.

    ``texts`` is the flight's own list of chunks (appended as they arrive); the
    id-free tail of each chunk's SSE block is encoded once, on first read.
    """

    __slots__ = ("_tails", "texts")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self._tails: list[bytes] = []

    def __len__(self) -> int:
        return len(self.texts)

    def event(self, index: int, event_id: int) -> Event:
        """Chunk ``index`` as one reader's event ``event_id``."""
        while len(self._tails) <= index:
            envelope = {"event": ANSWER_CHUNK, "data": self.texts[len(self._tails)]}
            self._tails.append(f"data: {json.dumps(envelope, separators=(',', ':'))}\n\n".encode())
        event = Event(event_id, ANSWER_CHUNK, self.texts[index])
        event._encoded = b"event: answer_chunk\nid: %d\n" % event_id + self._tails[index]
        return event


class EventLog:
    """The events of one request, in order, with a broadcast wake-up for readers.

    Position updates (``queued``) are not kept: only the newest one matters, so
    a reader that resumes gets the current place, not a history of places.

    Answer chunks are not kept either: the log follows its flight's
    :class:`SharedAnswer` from an id on, until the next event it publishes
    (the terminal one) fixes how many chunks it had.
    """

    def __init__(self, max_events: int = DEFAULT_REPLAY_EVENTS) -> None:
        self._events: deque[Event] = deque(maxlen=max_events)
        self._latest_position: Event | None = None
        self._last_id = 0
        self._waiters: list[asyncio.Future[None]] = []  # readers waiting for the next publish or nudge
        self.closed = False
        self._answer: SharedAnswer | None = None
        self._answer_base = 0  # the id before the answer's first chunk
        self._answer_len: int | None = None  # fixed once another event follows the answer

    @property
    def last_id(self) -> int:
        if self._answer is not None and self._answer_len is None:
            return self._answer_base + len(self._answer)
        return self._last_id

    def continue_from(self, last_id: int) -> None:
        """The next event's id is above ``last_id`` (a request taken over from another instance: its
        guest's ids keep increasing)."""
        self._last_id = max(self._last_id, last_id)

    def follow(self, answer: SharedAnswer) -> None:
        """From now on, the answer's chunks (those already there, then new ones) are this log's
        next events; call :meth:`nudge` when a chunk is added."""
        if self._answer is not None:
            raise RuntimeError("event log already follows an answer")
        self._answer, self._answer_base = answer, self._last_id
        self._latest_position = None

    def publish(self, name: str, data: Any) -> Event:
        return self._add(Event(self._next_id(), name, data))

    def publish_place(self, place: Place) -> Event:
        """A ``queued`` event made by the line's ticker (every waiting guest, every second): encoded
        now, directly (:func:`encode_place`)."""
        event = Event(self._next_id(), QUEUED, place)
        event._encoded = encode_place(event.id, place)
        return self._add(event)

    def _next_id(self) -> int:
        if self.closed:
            raise RuntimeError("event log already ended with a terminal event")
        if self._answer is not None and self._answer_len is None:
            self._answer_len = len(self._answer)
            self._last_id = self._answer_base + self._answer_len
        self._last_id += 1
        return self._last_id

    def _add(self, event: Event) -> Event:
        if event.name == QUEUED:
            self._latest_position = event
        else:
            self._latest_position = None
            self._events.append(event)
        self.closed = event.terminal
        self.nudge()
        return event

    def nudge(self) -> None:
        """Wake every reader, e.g. to send a ping or to notice its guest left."""
        # A future per waiting reader, resolved and dropped at once (a cancelled reader's is done
        # already): less than asyncio.Event's set(), clear() and a removal from its deque at every
        # wait, which every waiting guest's place update pays each second.
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Return at the next publish or nudge."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def after(self, last_seen_id: int) -> list[Event]:
        """Events with an id above ``last_seen_id``, oldest first."""
        newer: list[Event] = []
        for event in reversed(self._events):
            if event.id <= last_seen_id:
                break
            newer.append(event)
        newer.reverse()
        if self._answer is not None:
            # The answer's chunks stand between the events before it and those after it.
            base, answer = self._answer_base, self._answer
            end = len(answer) if self._answer_len is None else self._answer_len
            split = next((i for i, event in enumerate(newer) if event.id > base), len(newer))
            first = max(last_seen_id - base, 0)
            newer[split:split] = [answer.event(i, base + 1 + i) for i in range(first, end)]
        # A kept position event is always the newest: any other event replaces it.
        position = self._latest_position
        if position is not None and position.id > last_seen_id:
            newer.append(position)
        return newer

    async def wait_after(self, last_seen_id: int) -> None:
        """Return once an event newer than ``last_seen_id`` exists."""
        while self._last_id <= last_seen_id:
            await self.wait()

    def compact(self) -> None:
        """Forget all but the terminal event: a finished request stays cheap to keep for lookups."""
        terminal = self.terminal_event()
        self._events.clear()
        self._answer = None
        if terminal is not None:
            self._events.append(terminal)

    def terminal_event(self) -> Event | None:
        if self.closed and self._events:
            return self._events[-1]
        return None
