"""HTTP upstreams: a JSON POST whose answer is read by its content type.

``http`` posts ``{"query", "parameters", "session_id"}``; ``openai`` posts a
chat-completions request with ``"stream": true``, the settings' model, the
question as the one user message, and of the guest's parameters only those
allowed (``GUEST_UPSTREAM_ALLOWED_PARAMETERS``). Both read the response the
same way: ``application/json`` (one answer), ``text/event-stream`` (each data
line a chunk, OpenAI deltas understood), ``application/x-ndjson`` (a JSON
value per line) or any other streamed text.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import httpx
from httpx_sse import EventSource

from ..config import OPENAI_RESERVED_PARAMETERS
from ..conversation import conversation
from ..errors import AnswerTooLarge, UpstreamError, UpstreamFailure, UpstreamUnavailable
from .base import Chunk, WorkflowRequest, describe_transport_error

ANSWER_FIELDS = ("answer", "response", "text", "content", "output", "result")
CHUNK_FIELDS = ("answer_chunk", "chunk", "delta", "token", *ANSWER_FIELDS)
UNAVAILABLE_MESSAGE = "The assistant is unavailable right now. Please try again in a moment."
MALFORMED_MESSAGE = "The assistant sent an answer we could not read. Please try again."
DEFAULT_ALLOWED_PARAMETERS = ("temperature", "top_p")
WIRE_BYTES_PER_ANSWER_BYTE = 16


class HttpUpstream:
    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        kind: str = "http",
        api_key: str = "",
        model: str = "",
        allowed_parameters: Collection[str] = DEFAULT_ALLOWED_PARAMETERS,
        max_answer_bytes: int = 1_048_576,
        messages: str = "conversation",
        system_prompt: str = "",
    ) -> None:
        self.kind = kind
        self.allowed_parameters = frozenset(allowed_parameters) - set(OPENAI_RESERVED_PARAMETERS)
        self._client = client
        self.url = httpx.URL(url)
        path = self.url.path.rstrip("/")
        if kind == "openai" and not path.endswith("/chat/completions"):
            self.url = self.url.copy_with(path=path + "/chat/completions")
        self._model = model
        self._messages, self._system_prompt = messages, system_prompt
        # Bytes on the wire: an answer's own limit (the worker pool's) times what streaming formats
        # wrap each piece in (an OpenAI delta is ~40x its text); it also bounds a JSON answer's
        # and any one line's buffer.
        self.max_wire_bytes = max_answer_bytes * WIRE_BYTES_PER_ANSWER_BYTE
        self._headers = {"Accept": "text/event-stream, application/x-ndjson, application/json, text/plain"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:
        return f"HttpUpstream(kind={self.kind!r}, url={self.url!r})"

    def payload(self, request: WorkflowRequest) -> dict[str, Any]:
        if self.kind != "openai":
            return {"query": request.query, "parameters": dict(request.parameters), "session_id": request.session_id}
        # Only the allowed parameters: a guest must not pick the model, add a system message,
        # ask for 128 choices, 100 000 tokens or tools at the operator's expense.
        body = {name: value for name, value in request.parameters.items() if name in self.allowed_parameters}
        # The OpenAI front door (web/openai/) passes its caller's messages; guests' `chat` cannot
        # set them (web/admission.py refuses parameters.messages for this kind). One rule for both.
        messages = request.parameters.get("messages")
        if not isinstance(messages, list):
            messages = [{"role": "user", "content": request.query}]
        body.update(messages=conversation(messages, self._messages, self._system_prompt), stream=True)
        if self._model:
            body["model"] = self._model
        return body

    async def stream(self, request: WorkflowRequest) -> AsyncIterator[Chunk]:
        try:
            async with self._client.stream("POST", self.url, json=self.payload(request), headers=self._headers) as resp:
                resp.stream = CappedStream(resp.stream, self.max_wire_bytes)
                await _check_status(resp)
                async for chunk in _read_body(resp):
                    yield chunk
        except httpx.TransportError as exc:
            # A name that does not resolve will not in the next seconds: no retries, the guest hears now.
            unresolved = isinstance(exc.__cause__, aiohttp.ClientConnectorDNSError)
            raise UpstreamUnavailable(
                UNAVAILABLE_MESSAGE,
                detail=describe_transport_error(exc, self.url),
                retryable=False if unresolved else None,
            ) from exc
        except httpx.HTTPError as exc:  # e.g. a decoding error inside httpx
            raise UpstreamError(MALFORMED_MESSAGE, detail=f"{type(exc).__name__}: {exc}") from exc


class CappedStream(httpx.AsyncByteStream):
    """A response body that ends in ``answer_too_large`` past ``limit`` bytes: every reader (JSON,
    lines, SSE) reads through it, so none buffers more."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, limit: int) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream, self._limit, self.received = stream, limit, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self.received += len(chunk)
            if self.received > self._limit:
                raise AnswerTooLarge(AnswerTooLarge.MESSAGE, detail=f"the upstream sent more than {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _check_status(resp: httpx.Response) -> None:
    if resp.is_success:
        return
    body = (await resp.aread())[:300].decode("utf-8", "replace")
    detail = f"upstream answered HTTP {resp.status_code}: {body}"
    if resp.status_code == 429 or resp.status_code in (502, 503, 504):
        raise UpstreamUnavailable(
            UNAVAILABLE_MESSAGE, detail=detail, retry_after_s=retry_after_s(resp.headers.get("retry-after"))
        )
    raise UpstreamError(
        f"The assistant could not answer (error {resp.status_code}). Please try again later.",
        detail=detail,
        retryable=resp.status_code >= 500,
    )


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header in seconds from ``now``: delay-seconds or an HTTP-date (RFC 9110 10.2.3).

    Anything else (``inf``, ``nan``, negative, garbage) is None: the retry backs off as usual.
    How long a hold may last is the limiter's business (``GUEST_UPSTREAM_MAX_HOLD_SEC``)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (ValueError, TypeError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # "-0000": the RFC says HTTP-dates are in GMT
        seconds = max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


async def _read_body(resp: httpx.Response) -> AsyncIterator[Chunk]:
    content_type = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        yield answer_from_json(_loads(await resp.aread()))
    elif content_type == "text/event-stream":
        async for sse in EventSource(resp).aiter_sse():
            if not sse.data:
                continue  # per the SSE spec an event without data is not dispatched (httpx-sse does)
            if sse.data == "[DONE]":
                return
            chunk = chunk_from_data(sse.data, sse.event)
            if chunk is not None:
                yield chunk
    elif content_type in ("application/x-ndjson", "application/jsonl", "application/json-seq"):
        async for line in resp.aiter_lines():
            if line.strip():
                chunk = chunk_from_json(_loads(line))
                if chunk is not None:
                    yield chunk
    else:
        async for text in resp.aiter_text():
            if text:
                yield Chunk(text)


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UpstreamError(MALFORMED_MESSAGE, detail=f"invalid JSON from upstream: {exc}") from exc


def answer_from_json(body: Any) -> Chunk:
    """A whole (non-streamed) JSON answer."""
    if isinstance(body, dict):
        for source in (body, body.get("data")):
            if isinstance(source, dict):
                for name in ANSWER_FIELDS:
                    if isinstance(source.get(name), str):
                        return Chunk(source[name], _suggestions(source) or _suggestions(body))
        chunk = _openai_choice(body)
        if chunk is not None:
            chunk.tokens = _completion_tokens(body)
            return chunk
    raise UpstreamError(MALFORMED_MESSAGE, detail=f"no answer field in upstream JSON: {str(body)[:200]}")


def chunk_from_data(data: str, event: str = "message") -> Chunk | None:
    """One SSE event: JSON is read for known fields, anything else is text."""
    if event == "error":
        raise UpstreamError(
            "The assistant reported an error. Please try again.", detail=f"upstream error event: {data[:300]}"
        )
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return Chunk(data) if data else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Chunk(data)  # a bare number is text, not a JSON object
    return chunk_from_json(value)


def chunk_from_json(value: Any) -> Chunk | None:
    """A streamed JSON value: a string, an OpenAI delta, a guestqueue envelope, or a dict with a text field."""
    if isinstance(value, str):
        return Chunk(value)
    if not isinstance(value, dict):
        raise UpstreamError(MALFORMED_MESSAGE, detail=f"unexpected JSON from upstream: {str(value)[:200]}")
    if "event" in value and "data" in value:  # another guestqueue (or similar) upstream
        return _chunk_from_envelope(value["event"], value["data"])
    openai = _openai_choice(value)
    if (tokens := _completion_tokens(value)) is not None:  # OpenAI's usage: in the last chunk, or the answer
        return Chunk(openai.text if openai is not None else "", tokens=tokens)
    if openai is not None or "choices" in value:
        return openai
    for name in CHUNK_FIELDS:
        if isinstance(value.get(name), str):
            return Chunk(value[name], _suggestions(value))
    suggestions = _suggestions(value)
    return Chunk("", suggestions) if suggestions else None  # metadata (usage, ids): nothing to show


def _chunk_from_envelope(event: Any, data: Any) -> Chunk | None:
    if event == "answer_chunk" and isinstance(data, str):
        return Chunk(data)
    if event == "workflow_complete" and isinstance(data, dict):
        return Chunk("", _suggestions(data))
    if event in ("error", "timeout"):
        message = data.get("error") if isinstance(data, dict) else data
        raise UpstreamError("The assistant reported an error. Please try again.", detail=f"upstream {event}: {message}")
    return None  # queued / processing: the upstream's own line, not ours


def _openai_choice(value: dict[str, Any]) -> Chunk | None:
    choices = value.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    for holder in (choice.get("delta"), choice.get("message"), choice):
        if isinstance(holder, dict) and isinstance(holder.get("content"), str):
            return Chunk(holder["content"])
    if isinstance(choice.get("text"), str):
        return Chunk(choice["text"])
    return None


def _completion_tokens(value: dict[str, Any]) -> int | None:
    usage = value.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and 0 <= tokens < 10**9 else None


def _suggestions(value: dict[str, Any]) -> list[str] | None:
    found = value.get("suggested_questions")
    if isinstance(found, list) and all(isinstance(q, str) for q in found):
        return list(found)
    return None


__all__ = ["HttpUpstream", "UpstreamFailure", "answer_from_json", "chunk_from_data", "chunk_from_json"]
