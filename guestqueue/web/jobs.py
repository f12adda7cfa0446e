"""The pull workers' API (pull/board.py): take a pull line's jobs, send their answers.

- ``POST /api/v1/lines/{line}/jobs/receive`` (``WORK``): optional JSON ``{wait_sec (0-20, default
  10), max_jobs (1-10, default 1), visibility_timeout_sec (1-43200, default 30)}``; long-polls up to
  ``wait_sec`` and answers ``{"jobs": [{job_id, receipt, request: {query, parameters, session_id},
  receive_count}]}`` in line order (an empty list when none came, or the server began to stop; once
  it stops, 503 ``shutting_down`` with Retry-After). A
  long poll whose worker hung up takes nothing; a job it took as the worker hung up is offered again
  at once (not after its visibility timeout).
- With the receipt (``WORK`` on its line), under ``/api/v1/jobs/{receipt}/``:
  ``chunks`` (a JSON list of strings, or an ``application/x-ndjson`` body streamed as the answer
  is made, one JSON string per line, each passed on as it arrives; ``?offset=N``: the index of the
  body's first chunk in the answer), ``complete`` (optional ``{suggested_questions, offset}``, the
  offset being the answer's length in chunks), ``fail`` (``{error, retryable}``), ``extend``
  (``{visibility_timeout_sec}``). A receipt whose lease ran out, or whose job ended, gets 410
  ``receipt_expired``; chunks that do not continue the answer get 409 ``offset_mismatch`` with the
  ``offset`` to send from (chunks it already has are skipped: a post sent again repeats nothing);
  while Redis is away (or has just forgotten the job, until its owner puts it back), 503
  ``unavailable`` with Retry-After: send the same report again.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Protocol

from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import BodyTooLarge, InvalidField, NotFound, ReceiptGone, Rejected, ShuttingDown, UnknownLine
from ..lineup import Lineup
from ..pull.board import JobBoard, Report, receipt_line
from ..runtime import Queue
from ..tenancy.catalog import Catalog, Principal
from .access import Access
from .admission import ClientGone, read_json_list, read_optional_json

MAX_WAIT_S = 20.0  # as SQS's long poll
MAX_JOBS = 10
DEFAULT_VISIBILITY_S = 30.0
MAX_VISIBILITY_S = 43_200.0  # 12 hours, as SQS
# One post's body, streamed (each line also within max_body_bytes): the line's whole answer
# (max_answer_bytes, where the worker pool ends it) as JSON escapes may spell it, at most 6 bytes a byte.
JSON_BYTES_PER_ANSWER_BYTE = 6
NDJSON = ("application/x-ndjson", "application/jsonl", "application/jsonlines")


class LineRoutes(Protocol):
    """What the line API (lineapi.py) lends these routes."""

    @property
    def access(self) -> Access: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def lineup(self) -> Lineup | None: ...

    def _queue(self, request: HTTPConnection) -> Queue: ...

    def _require(self, request: HTTPConnection, permission: str) -> Principal: ...


class JobsApi:
    def __init__(self, api: LineRoutes) -> None:
        self._api = api

    def line_routes(self) -> list[BaseRoute]:
        """Under ``/api/v1/lines/{line}``."""
        return [Route("/jobs/receive", self.receive, methods=["POST"])]

    def receipt_routes(self) -> list[BaseRoute]:
        """Under ``/api/v1/jobs``."""
        return [
            Route("/{receipt}/chunks", self.chunks, methods=["POST"]),
            Route("/{receipt}/complete", self.complete, methods=["POST"]),
            Route("/{receipt}/fail", self.fail, methods=["POST"]),
            Route("/{receipt}/extend", self.extend, methods=["POST"]),
        ]

    async def receive(self, request: Request) -> Response:
        queue = self._api._queue(request)
        board = _board(queue)
        self._api._require(request, "WORK")
        data = await read_optional_json(request, queue.service.settings)
        wait_s = _number(data, "wait_sec", 10.0, 0.0, MAX_WAIT_S)
        max_jobs = _number(data, "max_jobs", 1, 1, MAX_JOBS)
        if max_jobs != int(max_jobs):
            raise InvalidField("'max_jobs' must be a whole number from 1 to 10.")
        visibility_s = _number(data, "visibility_timeout_sec", DEFAULT_VISIBILITY_S, 1.0, MAX_VISIBILITY_S)
        if not queue.service.accepting:  # stopping: a worker backs off (or asks another instance)
            raise ShuttingDown("This instance is stopping: ask again in a moment.", retry_after_s=1)
        gone = asyncio.Event()
        watch = asyncio.create_task(_until_disconnected(request, gone, board))
        try:
            jobs = await board.receive(int(max_jobs), wait_s, visibility_s, gone=gone)
            await asyncio.sleep(0)  # a hang-up that came with the jobs is heard before they are sent
        finally:
            watch.cancel()
        if gone.is_set():
            for job in jobs:  # nobody will hear of them: offered again now, not after the lease
                await board.release(job["receipt"])
            raise ClientGone("The worker disconnected while waiting for jobs.")
        return JSONResponse({"jobs": jobs})

    def _leased(self, request: Request) -> tuple[Queue, JobBoard, str]:
        """The receipt's line and board, if the caller may work on it."""
        receipt = request.path_params["receipt"]
        lineup = self._api.lineup
        try:
            queue = lineup.get(receipt_line(receipt)) if lineup is not None else None
        except UnknownLine:
            queue = None
        if queue is None or queue.jobs is None:
            raise ReceiptGone("This receipt is not valid (no pull line of that name runs here).")
        spec = queue.spec
        principal = self._api.access.principal(request, self._api.catalog)
        if not principal.may("WORK", spec.name, spec.application_id):
            self._api.access.require(request, self._api.catalog, "WORK", spec.name, spec.application_id)
        return queue, queue.jobs, receipt

    async def chunks(self, request: Request) -> Response:
        queue, board, receipt = self._leased(request)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        chunks = _Chunks(board, receipt, _offset(request))
        if media_type in NDJSON:
            settings = queue.service.settings
            most = settings.max_answer_bytes * JSON_BYTES_PER_ANSWER_BYTE + settings.max_body_bytes
            try:
                await self._stream_lines(request, chunks, settings.max_body_bytes, most)
            except Rejected as exc:  # (the job ended, the post is too large) mid-body: stop the sender
                exc.close_connection = True  # else the server would go on reading what it throws away
                raise
        else:
            await chunks.send(_texts(await read_json_list(request, queue.service.settings, "The body"), "The body"))
        if chunks.next is None:  # an empty post: it asks where the answer is
            await chunks.send([], always=True)
        return JSONResponse({"receipt": receipt, "chunks": chunks.sent, "offset": chunks.next})

    async def _stream_lines(self, request: Request, chunks: _Chunks, max_line: int, most: int) -> None:
        """Each complete line of the NDJSON body goes on as soon as it is in; past the line's
        max_answer_bytes the job ends (workers.py) and the next report answers 410."""
        pending, total = b"", 0
        try:
            async for piece in request.stream():
                total += len(piece)
                if total > most:
                    raise BodyTooLarge(f"One post of a job's chunks may be at most {most} bytes.")
                pending += piece
                *lines, pending = pending.split(b"\n")
                if len(pending) > max_line:
                    raise BodyTooLarge(f"A line of the body is longer than {max_line} bytes.")
                await chunks.send([text for line in lines if line.strip() for text in _texts([_line(line)], "A line")])
        except ClientDisconnect:
            raise ClientGone("The worker disconnected while sending.") from None
        if pending.strip():
            await chunks.send(_texts([_line(pending)], "A line"))

    async def complete(self, request: Request) -> Response:
        queue, board, receipt = self._leased(request)
        data = await read_optional_json(request, queue.service.settings)
        questions = data.get("suggested_questions", [])
        if not isinstance(questions, list) or not all(isinstance(q, str) for q in questions):
            raise InvalidField("'suggested_questions' must be a list of strings.")
        offset = data.get("offset")
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0):
            raise InvalidField("'offset' must be the answer's length in chunks (a whole number, 0 or more).")
        await board.report(receipt, Report("complete", {"suggested_questions": questions}), offset=offset)
        return JSONResponse({"receipt": receipt, "status": "completed"})

    async def fail(self, request: Request) -> Response:
        queue, board, receipt = self._leased(request)
        data = await read_optional_json(request, queue.service.settings)
        error, retryable = data.get("error", ""), data.get("retryable", False)
        if not isinstance(error, str) or not isinstance(retryable, bool):
            raise InvalidField('Send {"error": "what went wrong", "retryable": true|false}.')
        await board.report(receipt, Report("fail", {"error": error[:1000], "retryable": retryable}))
        return JSONResponse({"receipt": receipt, "status": "failed"})

    async def extend(self, request: Request) -> Response:
        queue, board, receipt = self._leased(request)
        data = await read_optional_json(request, queue.service.settings)
        visibility_s = _number(data, "visibility_timeout_sec", DEFAULT_VISIBILITY_S, 1.0, MAX_VISIBILITY_S)
        await board.extend(receipt, visibility_s)
        return JSONResponse({"receipt": receipt, "visibility_timeout_sec": visibility_s})


class _Chunks:
    """One post's chunks on their way to the board, each batch at its offset in the answer."""

    def __init__(self, board: JobBoard, receipt: str, offset: int | None) -> None:
        self._board, self._receipt, self._offset = board, receipt, offset
        self.sent = 0  # chunks this post carried (some may have been in the answer already)
        self.next: int | None = None  # the answer's length in chunks, as the board last said

    async def send(self, texts: list[str], *, always: bool = False) -> None:
        if not texts and not always:
            return
        at = None if self._offset is None else self._offset + self.sent
        self.next = await self._board.report(self._receipt, Report("chunks", {"texts": texts}), offset=at)
        self.sent += len(texts)


async def _until_disconnected(request: Request, gone: asyncio.Event, board: JobBoard) -> None:
    """Sets ``gone`` when the worker hangs up (the body is read: what comes next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()
    board.wake()  # its long poll looks again, and ends


def _offset(request: Request) -> int | None:
    raw = request.query_params.get("offset")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise InvalidField("'offset' must be the index of the body's first chunk in the answer (0 or more).")
    return int(raw)


def _board(queue: Queue) -> JobBoard:
    if queue.jobs is None:
        raise NotFound(f'Line {queue.name!r} is not a pull line (upstream_kind = "pull"); it has no jobs.')
    return queue.jobs


def _line(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes ("[[[[...")
        raise InvalidField("Each line of an NDJSON body is one JSON string (a chunk of the answer).") from None


def _texts(data: Any, what: str) -> list[str]:
    if not isinstance(data, list) or not all(isinstance(text, str) for text in data):
        raise InvalidField(f"{what} must be a JSON list of strings (the answer's next chunks).")
    return [text for text in data if text]


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise InvalidField(f"'{key}' must be a number from {low:g} to {high:g}.")
    return float(value)
