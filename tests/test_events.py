"""Event encoding and the per-request event log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

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
    Place,
    SharedAnswer,
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
    low=st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.floats()),
    span=st.one_of(st.just("list"), st.just("tuple"), st.just("short"), st.just("text")),
)
def test_fast_queued_encoding_matches_the_general_one(
    position: int, size: int, wait: float, request_id: str, low: float, span: str
) -> None:
    ranges: dict[str, Any] = {"list": [low, wait], "tuple": (low, wait), "short": [low], "text": ["1", "2"]}
    data = {
        "request_id": request_id,
        "queue_position": position,
        "total_ahead": position - 1,
        "queue_size": size,
        "estimated_wait_sec": wait,
        "estimated_wait_range_sec": ranges[span],
    }
    assert encode_queued(3, data) == encode_sse(3, QUEUED, {"event": QUEUED, "data": data})


@given(
    position=st.integers(min_value=1, max_value=10**6),
    size=st.integers(min_value=0, max_value=10**6),
    wait=st.floats(min_value=0, max_value=10**7).map(lambda w: round(w, 1)),
    request_id=st.one_of(st.just("0123456789abcdef0123456789abcdef"), st.text(max_size=8)),
    spread=st.floats(min_value=0, max_value=10**7).map(lambda w: round(w, 1)),
)
def test_a_place_the_ticker_made_encodes_as_the_general_encoder_would(
    position: int, size: int, wait: float, request_id: str, spread: float
) -> None:
    place: Place = {
        "request_id": request_id,
        "queue_position": position,
        "total_ahead": position - 1,
        "queue_size": size,
        "estimated_wait_sec": wait,
        "estimated_wait_range_sec": (round(max(0.0, wait - spread), 1), round(wait + spread, 1)),
    }
    log = EventLog()
    event = log.publish_place(place)
    assert event.encode() == encode_sse(1, QUEUED, {"event": QUEUED, "data": dict(place)})
    assert log.after(0) == [event]


@given(st.text())
def test_a_shared_chunk_encodes_as_its_own_event_would(text: str) -> None:
    answer = SharedAnswer([text])
    assert answer.event(0, 7).encode() == encode_sse(7, ANSWER_CHUNK, {"event": ANSWER_CHUNK, "data": text})


async def test_riders_follow_one_answer_in_their_own_id_sequences() -> None:
    parts: list[str] = []
    answer = SharedAnswer(parts)
    early, late = EventLog(), EventLog()
    early.publish(QUEUED, {"queue_position": 1})
    early.publish(PROCESSING, {})
    early.follow(answer)
    parts.extend(["a", "b"])
    assert early.last_id == 4
    for _ in range(3):
        late.publish(QUEUED, {"queue_position": 1})
    late.publish(PROCESSING, {})
    late.follow(answer)  # joins after two chunks: it still gets them, as its ids 5 and 6
    parts.append("c")
    assert [(e.id, e.name, e.data) for e in late.after(0)] == [
        (4, PROCESSING, {}),
        (5, ANSWER_CHUNK, "a"),
        (6, ANSWER_CHUNK, "b"),
        (7, ANSWER_CHUNK, "c"),
    ]
    assert [e.data for e in early.after(3)] == ["b", "c"], "resuming mid-answer"
    early.publish(WORKFLOW_COMPLETE, {"answer": "abc"})
    parts.append("d")  # a later chunk (for other riders) is not this log's any more
    assert [(e.id, e.name) for e in early.after(4)] == [(5, ANSWER_CHUNK), (6, WORKFLOW_COMPLETE)]
    assert early.last_id == 6 and early.closed
    early.compact()
    assert [e.name for e in early.after(0)] == [WORKFLOW_COMPLETE]


def test_a_rider_costs_no_memory_per_chunk() -> None:
    parts = [f"chunk {i} " for i in range(500)]
    answer = SharedAnswer(parts)
    logs = [EventLog() for _ in range(200)]
    for log in logs:
        log.publish(PROCESSING, {})
        log.follow(answer)
    assert all(len(log._events) == 1 for log in logs), "chunks live once, in the shared answer"
    assert len(logs[-1].after(0)) == 501
