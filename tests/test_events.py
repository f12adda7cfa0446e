"""Event encoding and the per-request event log."""

from __future__ import annotations

import asyncio
import json

from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given
from hypothesis import strategies as st

from guestqueue.events import (
    ANSWER_CHUNK,
    PROCESSING,
    QUEUED,
    WORKFLOW_COMPLETE,
    Event,
    EventLog,
    encode_queued,
    encode_sse,
)

HOSTILE = [
    "plain",
    "two\nlines",
    "\n\nevent: workflow_complete\ndata: {}\n\n",
    "bare\rcarriage",
    "crlf\r\nid: 99\r\nretry: 1",
    "nul\x00byte",
    "unicode line sep \u2028 and \u2029 and \x85 and \x0b\x0c\x1c",
    ": looks like a comment",
]


def _parse(stream: bytes) -> list[tuple[str, str, str]]:
    lines, decoder = SSELineDecoder(), SSEDecoder()
    out = []
    for line in [*lines.decode(stream.decode()), *lines.flush()]:
        sse = decoder.decode(line)
        if sse is not None:
            out.append((sse.event, sse.id, sse.data))
    return out


def test_hostile_text_stays_one_event() -> None:
    stream = b"".join(Event(i + 1, ANSWER_CHUNK, text).encode() for i, text in enumerate(HOSTILE))
    parsed = _parse(stream)
    assert len(parsed) == len(HOSTILE)
    for (name, event_id, data), (i, text) in zip(parsed, enumerate(HOSTILE), strict=True):
        assert name == ANSWER_CHUNK and event_id == str(i + 1)
        assert json.loads(data) == {"event": ANSWER_CHUNK, "data": text}


def test_log_replays_only_newer_events_and_keeps_only_the_latest_position() -> None:
    log = EventLog()
    for position in (3, 2, 1):
        log.publish(QUEUED, {"queue_position": position})
    assert [e.data["queue_position"] for e in log.after(0)] == [1]
    log.publish(PROCESSING, {})
    log.publish(ANSWER_CHUNK, "a")
    log.publish(ANSWER_CHUNK, "b")
    assert [e.id for e in log.after(0)] == [4, 5, 6]
    assert [e.data for e in log.after(5)] == ["b"]
    log.publish(WORKFLOW_COMPLETE, {})
    assert log.closed and log.terminal_event() is not None and log.after(7) == []


async def test_readers_wake_on_publish() -> None:
    log = EventLog()
    waiter = asyncio.create_task(log.wait_after(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    log.publish(QUEUED, {})
    await asyncio.wait_for(waiter, 1)


def test_compact_keeps_only_the_terminal_event() -> None:
    log = EventLog()
    for i in range(5):
        log.publish(ANSWER_CHUNK, str(i))
    log.publish(WORKFLOW_COMPLETE, {"answer": "01234"})
    log.compact()
    assert [e.name for e in log.after(0)] == [WORKFLOW_COMPLETE] and log.after(6) == []


def test_bounded_replay_buffer() -> None:
    log = EventLog(max_events=5)
    for i in range(20):
        log.publish(ANSWER_CHUNK, str(i))
    assert [e.data for e in log.after(0)] == [str(i) for i in range(15, 20)]


@given(
    position=st.integers(min_value=0, max_value=10**6),
    size=st.integers(min_value=0, max_value=10**6),
    wait=st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.floats()),
    request_id=st.one_of(st.just("0123456789abcdef0123456789abcdef"), st.text(max_size=8)),
)
def test_fast_queued_encoding_matches_the_general_one(position: int, size: int, wait: float, request_id: str) -> None:
    data = {"request_id": request_id, "queue_position": position, "total_ahead": position - 1,
            "queue_size": size, "estimated_wait_sec": wait}
    assert encode_queued(3, data) == encode_sse(3, QUEUED, {"event": QUEUED, "data": data})
