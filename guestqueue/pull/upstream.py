"""The ``pull`` kind: remote workers take the line's calls as jobs (board.py).

A flight that got its slot and pacing turn is offered on the line's job board;
its guests hear ``processing`` when a worker takes it (the first report,
``taken``), then the worker's chunks as they arrive, exactly as from any other
upstream. A lease that runs out before the first chunk puts the job back at the
front of the board (``receive_count`` + 1; past ``max_receive_count`` the guest
gets ``error`` ``upstream_unavailable``); after a chunk the answer ends
``interrupted``: a guest never gets a second answer. On Redis the board waits
while Redis is away and puts back a job Redis forgot (redisboard.py): the answer
goes on from the worker that holds it.

With no worker about (none has asked for jobs or reported for
``NO_WORKER_AFTER_S``, and no lease is held), the line's ``queued`` events carry
``no_worker_sec`` and ``/health`` is ``degraded``: a guest is not shown a
confident wait that only a worker could make true.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from ..errors import Interrupted, UpstreamError, UpstreamUnavailable
from ..upstream.base import Chunk, WorkflowRequest
from .board import Job, JobBoard

DEFAULT_MAX_RECEIVE_COUNT = 3


def with_worker_notice(board: JobBoard, notice: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """What each ``queued`` event of a pull line adds: the line's own notice, and how long no worker
    has been seen while that is ``NO_WORKER_AFTER_S`` or more."""

    def worker_notice() -> dict[str, Any]:
        absent_s = board.worker_absent_s()
        added = notice()
        return added if absent_s is None else {**added, "no_worker_sec": int(absent_s)}

    return worker_notice


def worker_problems(board: JobBoard) -> Callable[[], list[str]]:
    """What /health says about a pull line's workers."""

    def problems() -> list[str]:
        absent_s = board.worker_absent_s()
        if absent_s is None:
            return []
        return [f"no pull worker has asked for jobs in {int(absent_s)} s"]

    return problems


class PullUpstream:
    kind = "pull"
    starts_when_taken = True  # the worker pool tells guests `processing` at the first chunk (taken)

    def __init__(self, board: JobBoard, *, max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT) -> None:
        self.board = board
        self.max_receive_count = max_receive_count

    def __repr__(self) -> str:
        return f"PullUpstream({self.board!r})"

    async def stream(self, request: WorkflowRequest) -> AsyncIterator[Chunk]:
        job = Job(request.request_id, request)
        said = False
        await self.board.offer(job)
        try:
            while True:
                report = await self.board.next_report(job)
                if report.kind == "taken":
                    yield Chunk()
                elif report.kind == "chunks":
                    said = True
                    for text in report.data["texts"]:
                        yield Chunk(text)
                elif report.kind == "complete":
                    yield Chunk(suggested_questions=report.data.get("suggested_questions") or [])
                    return
                elif report.kind == "fail":
                    error = str(report.data.get("error") or "the worker failed")
                    kind = UpstreamUnavailable if report.data.get("retryable") and not said else UpstreamError
                    raise kind(
                        "The assistant failed while answering. Please try again.",
                        detail=f"pull worker: {error}",
                        retryable=bool(report.data.get("retryable")),
                    )
                elif said:  # expired after the first chunk: never a second answer
                    raise Interrupted(
                        "The answer was interrupted. Please ask again.",
                        detail="the pull worker's lease ran out mid-answer",
                    )
                elif job.receive_count >= self.max_receive_count:
                    raise UpstreamUnavailable(
                        "No worker could answer right now. Please try again later.",
                        detail=f"the job's lease ran out {job.receive_count} times",
                        retryable=False,
                    )
                else:
                    await self.board.offer(job, front=True)
        finally:
            await self.board.withdraw(job)
