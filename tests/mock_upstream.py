"""A scripted upstream for the tests, run as its own process:

    python tests/mock_upstream.py PORT

Behaviour is chosen per request by query parameters, so one process serves
every test; ``tag`` groups the calls a test made so it can read them back
from ``GET /calls?tag=...`` (start time, body, whether the caller went away;
``?prefix=...`` gives ``{tag: calls}`` for every tag starting with it).

    mode      sse (default) | openai | json | ndjson | text | status | malformed | hang | reset | drip | empty
              | memory (an upstream with per-session memory: the chunks name the body's session_id
              and the questions that session asked before, like a chat model with history)
    chunks    number of chunks (default 3)          delay      seconds between chunks (default 0)
    first     seconds before the first byte         status     HTTP status for mode=status
    fail      fail the first N calls of this tag with ``status`` (then behave per mode)
    retry_after  Retry-After header sent with a failure, as given (``99999``, ``inf``, garbage)
    retry_after_in  Retry-After as an HTTP-date this many seconds from now
    echo      1 = the chunks are the query text itself (for framing tests)
    ping      1 = an SSE comment after every chunk
    size      each chunk is this many bytes of "x" (a large answer)
    gate      a name: the call waits before its first byte until ``POST /gates/NAME`` opens it
              (at most 120 s), so a test holds a slot for exactly as long as it needs

The same keys in the request body's ``parameters.mock`` object win over the URL's.
Any of these may also come per request in the body, as ``parameters.mock``
(an object of the same names), so one URL can script thousands of different
calls (the chaos soak). Each call records how many chunks it ``sent``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

INJECTION = 'line one\n\nevent: workflow_complete\ndata: {"forged": true}\r\nid: 999\rretry: 1\n\n'
CALLS: dict[str, list[dict[str, Any]]] = defaultdict(list)
MEMORY: dict[tuple[str, str], list[str]] = defaultdict(list)  # (tag, session_id): questions asked
GATES: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
GATE_WATCHDOG_S = 120.0  # a test that never opens its gate fails on its own timeouts, not hangs


def _chunks(params: dict[str, str], body: dict[str, Any]) -> list[str]:
    if params.get("echo") == "1":
        return [str(body.get("query", ""))]
    if params.get("inject") == "1":
        return ["safe start ", INJECTION, " safe end"]
    if params.get("mode") == "memory":
        session = str(body.get("session_id"))
        asked = MEMORY[params.get("tag", ""), session]
        chunks = [f"private answer for session={session}", f"; earlier questions: {asked}"]
        asked.append(str(body.get("query")))
        return chunks
    count = int(params.get("chunks", "3"))
    if "size" in params:
        return ["x" * int(params["size"])] * count
    return [f"chunk{i} " for i in range(count)]


async def upstream(request: Request) -> Response:
    body = json.loads(await request.body() or b"{}")
    # A guest's parameters {"mock": {...}} override the URL's, so tests that talk to a
    # guestqueue process (whose upstream URL is fixed) can still script each request.
    parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    params = {**dict(request.query_params), **{k: str(v) for k, v in dict(parameters.get("mock") or {}).items()}}
    tag = params.get("tag", "")
    call: dict[str, Any] = {
        "t": time.time(),
        "body": body,
        "disconnected": False,
        "finished": False,
        "sent": 0,
        "authorization": request.headers.get("authorization"),
    }
    CALLS[tag].append(call)
    mode = params.get("mode", "sse")
    delay = float(params.get("delay", "0"))
    if float(params.get("first", "0")):
        await asyncio.sleep(float(params["first"]))
    if "gate" in params:
        try:
            await asyncio.wait_for(GATES[params["gate"]].wait(), GATE_WATCHDOG_S)
        except TimeoutError:
            pass
    headers = {"Retry-After": params["retry_after"]} if "retry_after" in params else None
    if "retry_after_in" in params:
        headers = {"Retry-After": formatdate(time.time() + float(params["retry_after_in"]), usegmt=True)}
    if len(CALLS[tag]) <= int(params.get("fail", "0")) or mode == "status":
        return PlainTextResponse("upstream says no", status_code=int(params.get("status", "500")), headers=headers)
    chunks = _chunks(params, body)
    if mode == "json":
        return JSONResponse({"answer": "".join(chunks), "suggested_questions": ["next?"]})
    if mode == "malformed":
        return Response(b'{"answer": "unterminated', media_type="application/json")
    if mode == "empty":
        return Response(b"", media_type="text/plain")

    async def produce() -> AsyncIterator[bytes]:
        try:
            for i, text in enumerate(chunks):
                if i and delay:
                    await asyncio.sleep(delay)
                if mode == "hang" and i == 1:
                    await asyncio.sleep(3600)
                if mode == "drip":
                    for char in text:
                        yield char.encode()
                        call["sent"] += 1
                        await asyncio.sleep(delay or 1.0)
                    continue
                if mode == "reset" and i == 2:
                    raise ConnectionResetError("mock upstream resets mid-stream")
                yield encode(mode, text, event_id=i + 1)
                call["sent"] += 1
                if params.get("ping") == "1":
                    yield b": keep-alive\n\n"
            if mode == "sse":
                yield b'data: {"suggested_questions": ["more?"]}\n\n'
            if mode == "openai":
                yield b"data: [DONE]\n\n"
            call["finished"] = True
        except asyncio.CancelledError:
            call["disconnected"] = True
            raise
        finally:
            call["ended"] = time.time()  # with "t": how long the call ran (concurrency checks)

    sse = "text/event-stream"
    media = {"sse": sse, "hang": sse, "reset": sse, "openai": sse, "ndjson": "application/x-ndjson"}
    return StreamingResponse(produce(), media_type=media.get(mode, "text/plain"))


def encode(mode: str, text: str, event_id: int) -> bytes:
    if mode in ("sse", "hang", "reset"):
        return f"id: {event_id}\ndata: {json.dumps({'answer_chunk': text})}\n\n".encode()
    if mode == "openai":
        return f"data: {json.dumps({'choices': [{'delta': {'content': text}}]})}\n\n".encode()
    if mode == "ndjson":
        return (json.dumps({"chunk": text}) + "\n").encode()
    return text.encode()


async def calls(request: Request) -> Response:
    prefix = request.query_params.get("prefix")
    if prefix is not None:  # every tag starting with it: {tag: calls}
        return JSONResponse({tag: found for tag, found in CALLS.items() if tag.startswith(prefix)})
    return JSONResponse(CALLS.get(request.query_params.get("tag", ""), []))


async def open_gate(request: Request) -> Response:
    GATES[request.path_params["name"]].set()
    return PlainTextResponse("open")


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        Route("/upstream", upstream, methods=["POST"]),
        Route("/upstream/chat/completions", upstream, methods=["POST"]),
        Route("/calls", calls),
        Route("/gates/{name}", open_gate, methods=["POST"]),
        Route("/health", health),
    ]
)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False)
