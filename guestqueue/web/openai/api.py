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

This module reads the request and finds the line; the answer's shapes are in
completion.py, the error shape in errors.py.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ...conversation import caller_turns
from ...errors import InvalidField, InvalidJSON, Rejected
from ...runtime import Queue
from ...tenancy.catalog import Principal
from ...tickets import Status
from ..access import FOREIGN_KEYS_ANONYMOUS
from ..admission import asker_key, client_key, max_wait_header, read_optional_json, share_key
from ..lineapi import LineApi, until_done_or_disconnect
from ..stream import TicketStream
from .completion import Completion, CompletionStream
from .errors import OpenAIError, openai_error

# Chat-completion fields that are the front door's own; every other field goes to the line as a parameter.
OWN_FIELDS = ("model", "messages", "stream", "stream_options", "n", "user")
PROGRESS_HEADER = "x-guestqueue-progress"
STARTED = int(time.time())  # a model's "created": when this process started


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
        try:
            max_wait_s = max_wait_header(request)
        except InvalidField as exc:
            raise OpenAIError(exc.message, 400, "invalid_request_error", "invalid_max_wait", "X-Max-Wait") from None
        ticket = await service.submit(
            query,
            client=asker_key(request, asker),
            parameters=parameters,
            tier=self._lines._tier(request, asker),
            share=share_key(request, asker),
            max_wait_s=max_wait_s,
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
