"""The OpenAI front door's answer (openai.py): one request's events in OpenAI's shapes, as a stream
of ``chat.completion.chunk`` objects ending with ``data: [DONE]`` (with the queue's progress as SSE
comments, or as chunks for a caller asking for them) or as one ``chat.completion``.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ...events import ANSWER_CHUNK, ERROR, PROCESSING, QUEUED, RECONNECT, TIMEOUT, WORKFLOW_COMPLETE, Event
from ...service import QueueService
from ...tickets import Status, Ticket
from ..stream import TicketStream
from .errors import error_body

ERROR_STATUS = {  # an ending's code -> the HTTP status of a non-streamed answer
    "timeout": 504,
    "wait_timeout": 504,
    "deadline": 504,
    "upstream_unavailable": 503,
    "shutdown": 503,
    "unavailable": 503,
    "purged": 503,
    "cancelled": 499,
    "internal_error": 500,
}


class Completion:
    """One request's answer in OpenAI's shapes: streamed chunks, or one chat.completion."""

    def __init__(self, ticket: Ticket, model: str, *, include_usage: bool, progress: bool) -> None:
        self.ticket, self.model, self.include_usage, self.progress = ticket, model, include_usage, progress
        self.id = f"chatcmpl-{ticket.id}"
        self.created = int(time.time())
        self._role_sent = False

    def _chunk(self, choices: list[dict[str, Any]], **more: Any) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **more,
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def encode(self, event: Event) -> bytes:
        """An event of the ticket's log as the stream's bytes (b"" for one the stream does not show)."""
        data = event.data
        if event.name == QUEUED:
            low, high = data.get("estimated_wait_range_sec") or (data["estimated_wait_sec"],) * 2
            comment = (
                f": queue position={data['queue_position']} ahead={data['total_ahead']} "
                f"eta_s={data['estimated_wait_sec']} eta_range_s={low}-{high}\n\n"
            ).encode()
            if self.progress:
                comment += self._chunk(
                    [],
                    guestqueue={
                        "status": "queued",
                        "queue_position": data["queue_position"],
                        "estimated_wait_sec": data["estimated_wait_sec"],
                        "estimated_wait_range_sec": [low, high],
                    },
                )
            return comment
        if event.name == PROCESSING:
            out = self._role()
            if self.progress:
                out = (
                    self._chunk([], guestqueue={"status": "processing", "queue_position": 0, "estimated_wait_sec": 0})
                    + out
                )
            return out
        if event.name == ANSWER_CHUNK:
            return self._role() + self._delta({"content": data})
        if event.name == WORKFLOW_COMPLETE:
            out = self._role() + self._delta({}, "stop")
            if self.include_usage:
                out += self._chunk([], usage=self.usage())
            return out + b"data: [DONE]\n\n"
        if event.name in (TIMEOUT, ERROR, RECONNECT):
            message, code = _ending(event)
            error = error_body(message, "timeout" if code in ("timeout", "deadline") else "server_error", code)
            return b"data: " + json.dumps(error).encode() + b"\n\n"
        return b""

    def _role(self) -> bytes:
        if self._role_sent:
            return b""
        self._role_sent = True
        return self._delta({"role": "assistant", "content": ""})

    def usage(self) -> dict[str, int]:
        """Token counts, estimated (about 4 characters a token): guestqueue does not tokenize."""
        prompt = _tokens(self.ticket.query)
        completion = _tokens(self.ticket.answer)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self) -> Response:
        ticket = self.ticket
        if ticket.status is Status.COMPLETED:
            return JSONResponse(
                {
                    "id": self.id,
                    "object": "chat.completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": ticket.answer},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": self.usage(),
                }
            )
        terminal = ticket.events.terminal_event()
        message, code = _ending(terminal) if terminal is not None else (ticket.error or "", ticket.error_code)
        status = ERROR_STATUS.get(code or "", 502)
        type_ = "timeout" if status == 504 else "server_error"
        return JSONResponse(error_body(message, type_, code), status_code=status)


def _ending(event: Event) -> tuple[str, str]:
    data = event.data
    if event.name == TIMEOUT:
        return str(data["error"]), str(data.get("code", "timeout"))
    if event.name == RECONNECT:
        return "The service is restarting. Please ask again.", "shutdown"
    return str(data.get("error", "")), str(data.get("code", "upstream_error"))


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


class CompletionStream(TicketStream):
    """The ticket's events as OpenAI's stream. A client that goes away leaves at once: it cannot resume."""

    def __init__(self, service: QueueService, ticket: Ticket, completion: Completion, *, client: str) -> None:
        super().__init__(service, ticket, client=client)
        self._completion = completion
        self.headers[3] = (b"x-request-id", completion.id.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._ticket.done and not self._ticket.moved:
                self._service.cancel(self._ticket, Status.CANCELLED, "disconnected", "The client disconnected.")

    def _encode(self, event: Event) -> bytes:
        return self._completion.encode(event)
