"""An OpenAI-compatible front door: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Any OpenAI client (the official SDKs, LangChain, chat UIs) asks a line as a
model: ``model`` names the line, by its name or its ``openai_model`` alias.
The request waits in that line like any guest's. With ``stream: true`` the
answer is a standard ``text/event-stream`` of ``chat.completion.chunk``
objects ending with ``data: [DONE]``; while the request waits the stream
carries SSE comment lines ``: queue position=3 ahead=2 eta_s=12.5`` (every
client ignores comments) and, for a caller sending ``X-Guestqueue-Progress:
events``, chunks with an empty ``choices`` list and a ``guestqueue`` object.
``stream: false`` waits and answers one ``chat.completion``.

Errors are OpenAI's shape ``{"error": {message, type, param, code}}``: a full
line is 429 ``rate_limit_exceeded`` with ``Retry-After`` and ``retry-after-ms``
(the headers the SDKs wait on before retrying), a timeout 504, upstream
failures 502/503, bad input 400 ``invalid_request_error``. Keys are the lines'
API keys, as ``Authorization: Bearer``. A client that closes its stream leaves
the line, or stops its upstream call: an OpenAI client cannot resume.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from ..conversation import caller_turns
from ..errors import InvalidJSON, Rejected
from ..events import ANSWER_CHUNK, ERROR, PROCESSING, QUEUED, RECONNECT, TIMEOUT, WORKFLOW_COMPLETE, Event
from ..runtime import Queue
from ..service import QueueService
from ..tenancy.catalog import Principal
from ..tickets import Status, Ticket
from .access import FOREIGN_KEYS_ANONYMOUS
from .admission import asker_key, client_key, read_optional_json
from .lineapi import LineApi, until_done_or_disconnect
from .stream import TicketStream

# Chat-completion fields that are the front door's own; every other field goes to the line as a parameter.
OWN_FIELDS = ("model", "messages", "stream", "stream_options", "n", "user")
PROGRESS_HEADER = "x-guestqueue-progress"
STARTED = int(time.time())  # a model's "created": when this process started
ERROR_STATUS = {  # an ending's code -> the HTTP status of a non-streamed answer
    "timeout": 504,
    "wait_timeout": 504,
    "upstream_unavailable": 503,
    "shutdown": 503,
    "unavailable": 503,
    "purged": 503,
    "cancelled": 499,
    "internal_error": 500,
}


class OpenAIError(Rejected):
    """An error in OpenAI's shape (the rest of guestqueue's ``{"error", "code"}`` is mapped to it)."""

    def __init__(
        self,
        message: str,
        status_code: int,
        type_: str,
        code: str | None,
        param: str | None = None,
        *,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status_code, self.type, self.openai_code, self.param = status_code, type_, code, param


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error(exc: Rejected) -> Response:
    """Any rejection, answered as OpenAI answers it (with the retry headers the SDKs honour)."""
    if isinstance(exc, OpenAIError):
        type_, code, param = exc.type, exc.openai_code, exc.param
    elif exc.status_code == 429:
        type_, code, param = "requests", "rate_limit_exceeded", None
    elif exc.status_code == 401:
        type_, code, param = "invalid_request_error", "invalid_api_key", None
    elif exc.status_code == 403:
        type_, code, param = "permission_error", exc.code, None
    elif exc.status_code >= 500:
        type_, code, param = "server_error", exc.code, None
    else:
        type_, code, param = "invalid_request_error", exc.code, None
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s), "retry-after-ms": str(int(exc.retry_after_s * 1000))}
    status = 400 if exc.status_code in (413, 415, 422) else exc.status_code
    return JSONResponse(error_body(exc.message, type_, code, param), status_code=status, headers=headers)


class OpenAIApi:
    """The routes under the front door's prefix (``GUEST_OPENAI_PREFIX``, default ``/v1``)."""

    def __init__(self, lines: LineApi) -> None:
        self._lines = lines

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/models", self.models, methods=["GET"]),
            Route("/models/{model:path}", self.model, methods=["GET"]),
        ]

    def _principal(self, request: HTTPConnection) -> Principal:
        request.scope[FOREIGN_KEYS_ANONYMOUS] = True
        return self._lines.access.principal(request, self._lines.catalog)

    def _visible(self, request: HTTPConnection) -> list[Queue]:
        """The lines this caller may ask, each by the name it is listed under."""
        lineup = self._lines.lineup
        principal = self._principal(request)
        return [queue for queue in lineup or () if _reachable(queue, principal, _model_id(queue))]

    def _line(self, request: HTTPConnection, model: str) -> Queue:
        """The line ``model`` names, if this caller may ask it; else exactly the answer for a model that
        does not exist (a private line cannot be probed)."""
        lineup = self._lines.lineup
        principal = self._principal(request)
        for queue in lineup or ():
            if model in (queue.spec.name, queue.spec.openai_model) and _reachable(queue, principal, model):
                return queue
        raise OpenAIError(
            f"The model `{model}` does not exist or you do not have access to it.",
            404,
            "invalid_request_error",
            "model_not_found",
            "model",
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model(queue) for queue in self._visible(request)]})

    async def model(self, request: Request) -> Response:
        return JSONResponse(_model(self._line(request, request.path_params["model"])))

    async def chat_completions(self, request: Request) -> Response | TicketStream:
        try:
            return await self._chat_completions(request)
        except Rejected as exc:
            return openai_error(exc)

    async def _chat_completions(self, request: Request) -> Response | TicketStream:
        settings = self._lines.settings
        try:
            body = await read_optional_json(request, settings)
        except InvalidJSON as exc:
            raise OpenAIError(str(exc.message), 400, "invalid_request_error", "invalid_json") from None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise OpenAIError("You must provide a model parameter.", 400, "invalid_request_error", None, "model")
        queue = self._line(request, model)
        request.scope.setdefault("path_params", {})["line"] = queue.name  # the line API's checks read it
        asker = self._lines._asker(request)
        messages = _messages(body.get("messages"))
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise OpenAIError("'stream' must be true or false.", 400, "invalid_request_error", None, "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise OpenAIError(
                "'stream_options' must be an object.", 400, "invalid_request_error", None, "stream_options"
            )
        if body.get("n") not in (None, 1):
            raise OpenAIError("Only n = 1 is supported.", 400, "invalid_request_error", None, "n")
        parameters = {key: value for key, value in body.items() if key not in OWN_FIELDS}
        # The line's rule decides which of the caller's turns go on (conversation.py), whatever the upstream.
        parameters["messages"] = caller_turns(messages, queue.service.settings.upstream_messages)
        query = _last_user_text(messages)
        if len(query) > queue.service.settings.max_query_chars:
            raise OpenAIError(
                f"The last user message is longer than {queue.service.settings.max_query_chars} characters.",
                400,
                "invalid_request_error",
                None,
                "messages",
            )
        service = queue.service
        ticket = await service.submit(
            query, client=asker_key(request, asker), parameters=parameters, tier=self._lines._tier(request, asker)
        )
        completion = Completion(
            ticket,
            model,
            include_usage=bool(options.get("include_usage")),
            progress=request.headers.get(PROGRESS_HEADER, "").lower() == "events",
        )
        if stream:
            return CompletionStream(service, ticket, completion, client=client_key(request))
        service.subscribe(ticket)
        try:
            finished = await until_done_or_disconnect(ticket, request)
        finally:
            service.unsubscribe(ticket)
            if not ticket.done:  # the client went away: it cannot come back for it
                service.cancel(ticket, Status.CANCELLED, "disconnected", "The client disconnected.")
        if not finished:
            return Response(status_code=499)
        if ticket.moved:  # this instance is stopping: an OpenAI client cannot follow it elsewhere
            raise OpenAIError("The service is restarting. Please ask again.", 503, "server_error", "shutdown")
        return completion.whole()


def _reachable(queue: Queue, principal: Principal, model: str) -> bool:
    """May ``principal`` ask ``queue`` as ``model``? A waiting room is no model (it answers with a
    token). A key with WRITE asks its lines by any of their names; anyone asks the deployment's
    public lines, and a tenant's public line only by the model name the super admin gave it
    (``openai_model``): names anonymous clients reach are the operator's to give."""
    spec = queue.spec
    if queue.sessions is not None:
        return False
    if principal.may("WRITE", spec.name, spec.application_id):
        return True
    return spec.public and (spec.application_id is None or (bool(spec.openai_model) and model == spec.openai_model))


def _model_id(queue: Queue) -> str:
    return queue.spec.openai_model or queue.name


def _model(queue: Queue) -> dict[str, Any]:
    return {
        "id": _model_id(queue),
        "object": "model",
        "created": STARTED,
        "owned_by": queue.spec.application_id or "guestqueue",
    }


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise OpenAIError(
            "'messages' must be a non-empty array of messages.", 400, "invalid_request_error", None, "messages"
        )
    for n, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise OpenAIError(
                f"messages[{n}] must be an object with a 'role'.", 400, "invalid_request_error", None, f"messages[{n}]"
            )
    return value


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and (text := _text(message.get("content"))).strip():
            return text
    raise OpenAIError("The messages need a user message with text.", 400, "invalid_request_error", None, "messages")


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
            comment = (
                f": queue position={data['queue_position']} ahead={data['total_ahead']} "
                f"eta_s={data['estimated_wait_sec']}\n\n"
            ).encode()
            if self.progress:
                comment += self._chunk(
                    [],
                    guestqueue={
                        "status": "queued",
                        "queue_position": data["queue_position"],
                        "estimated_wait_sec": data["estimated_wait_sec"],
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
            error = error_body(message, "server_error" if code != "timeout" else "timeout", code)
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
        return str(data["error"]), "timeout"
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
