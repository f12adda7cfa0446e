"""``guestqueue worker``: serve a pull line's jobs with a Python workflow, from anywhere.

The worker needs no inbound port (a GPU box behind NAT): it long-polls
``jobs/receive``, runs the workflow (the ``python`` upstream's signature: an
async generator taking a :class:`~guestqueue.upstream.WorkflowRequest`),
streams the chunks back as one NDJSON body, then ``complete`` (or ``fail``).
While a job runs its lease is extended every third of the visibility timeout.
A lost connection is retried with exponential backoff and jitter. A job's
report that meets a 503 (Redis away) or a lost connection is sent again, the
chunks from the ``offset`` the server has (it skips those it already took),
until the lease would have run out; a receipt that is gone (410) means the job
went elsewhere or ended, and it is dropped. A plain
``http://`` server that is not this machine gets one warning: the key and the
jobs would cross the network in clear text (nginx.conf shows how to add TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..upstream import Chunk, Workflow, WorkflowRequest, load_workflow

logger = logging.getLogger("guestqueue.worker")
BACKOFF_S, BACKOFF_CAP_S = 0.5, 30.0
REPORT_RETRY_S, REPORT_RETRY_CAP_S = 0.25, 5.0  # a job's report sent again (503, a lost connection)
MAX_OFFSET_FIXES = 3  # 409s in a row (each says where to go on from) before a job is given up
MAX_JOBS_PER_RECEIVE = 10  # the server's limit (web/jobs.py)


class PullWorker:
    def __init__(
        self,
        server: str,
        line: str,
        key: str,
        workflow: Workflow,
        *,
        concurrency: int = 1,
        visibility_s: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._api = server.rstrip("/") + "/api/v1"
        _warn_if_in_clear(server)
        self._line, self._workflow = line, workflow
        self._concurrency, self._visibility_s = concurrency, visibility_s
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        self._running: set[asyncio.Task[None]] = set()
        self.served = 0

    async def run(self) -> None:
        """Take and serve jobs until cancelled."""
        failures = 0
        while True:
            free = self._concurrency - len(self._running)
            if free <= 0:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                reply = await self._client.post(
                    f"{self._api}/lines/{self._line}/jobs/receive",
                    headers=self._headers,
                    json={
                        "wait_sec": 20,
                        "max_jobs": min(free, MAX_JOBS_PER_RECEIVE),
                        "visibility_timeout_sec": self._visibility_s,
                    },
                )
                reply.raise_for_status()
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status not in (408, 429):  # a wrong key, line or request: retries won't help
                    raise SystemExit(f"guestqueue worker: {exc.response.status_code} {exc.response.text}") from None
                failures = await _back_off(failures, exc)
                continue
            except httpx.HTTPError as exc:
                failures = await _back_off(failures, exc)
                continue
            failures = 0
            for job in reply.json()["jobs"]:
                task = asyncio.create_task(self._serve(job))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _serve(self, job: dict[str, Any]) -> None:
        url = f"{self._api}/jobs/{job['receipt']}"
        answer = _Answer()
        lease = _Lease(self._visibility_s)
        making = asyncio.create_task(answer.make(self._workflow, WorkflowRequest(job["job_id"], **job["request"])))
        keeper = asyncio.create_task(self._keep_leased(url, lease))
        try:
            outcome = await self._deliver(url, answer, lease)
        finally:
            keeper.cancel()
            making.cancel()
        if outcome == "answered":
            self.served += 1
            logger.info("job %s answered (%d served)", job["job_id"], self.served)
        else:
            logger.warning("job %s %s", job["job_id"], outcome)

    async def _deliver(self, url: str, answer: _Answer, lease: _Lease) -> str:
        """Send the answer's chunks as they are made, then ``complete`` (or ``fail``). A report that
        meets a server or Redis away (503, a lost connection) is sent again from where the server
        has the answer (``offset``: chunks it already has are skipped there) until the lease would
        have run out; 410 means the job is not ours any more."""
        offset, attempt = 0, 0
        while True:
            step = (
                "chunks"
                if offset < len(answer.texts) or not answer.done
                else "complete"
                if answer.error is None
                else "fail"
            )
            try:
                reply: httpx.Response | None = await self._post(f"{url}/{step}", answer, offset)
            except httpx.HTTPError as exc:
                logger.info("%s of %s not delivered: %s %s", step, url, type(exc).__name__, exc)
                reply = None
            if reply is not None and reply.is_success:
                lease.renewed()
                if step != "chunks":
                    return "answered" if step == "complete" else f"failed: {answer.error}"
                offset, attempt = reply.json()["offset"], 0
            elif reply is not None and reply.status_code == 410:
                return "is gone (its lease ran out, or it ended)"
            elif reply is not None and reply.status_code == 409:
                offset = reply.json()["offset"]  # the server has the answer up to here: go on from there
                attempt += 1
                if offset > len(answer.texts) or attempt > MAX_OFFSET_FIXES:
                    return f"dropped: the server has {offset} of its {len(answer.texts)} chunks"
            elif reply is not None and not _retryable(reply.status_code):
                refused = f"{step} refused: {reply.status_code} {reply.text}"
                if step == "chunks":  # (too large, or not allowed): say so, once
                    with contextlib.suppress(httpx.HTTPError):
                        await self._client.post(
                            f"{url}/fail", headers=self._headers, json={"error": refused[:500], "retryable": False}
                        )
                return f"dropped: {refused}"
            elif lease.lapsed():
                return "dropped: the server could not take its reports before the lease ran out"
            else:
                attempt += 1
                await asyncio.sleep(_retry_delay_s(reply, attempt))

    async def _post(self, url: str, answer: _Answer, offset: int) -> httpx.Response:
        if url.endswith("/chunks"):  # streamed: each chunk goes on as the workflow makes it
            return await self._client.post(
                url,
                params={"offset": offset},
                content=answer.lines(offset),
                headers={**self._headers, "Content-Type": "application/x-ndjson"},
            )
        if answer.error is not None:
            error = f"{type(answer.error).__name__}: {answer.error}"[:500]
            body = {"error": error, "retryable": isinstance(answer.error, httpx.HTTPError)}
        else:
            body = {"suggested_questions": answer.suggested, "offset": len(answer.texts)}
        return await self._client.post(url, headers=self._headers, json=body)

    async def _keep_leased(self, url: str, lease: _Lease) -> None:
        while True:
            await asyncio.sleep(self._visibility_s / 3)
            try:
                reply = await self._client.post(
                    f"{url}/extend", headers=self._headers, json={"visibility_timeout_sec": self._visibility_s}
                )
            except httpx.HTTPError as exc:
                logger.warning("could not extend %s: %s", url, exc)
                continue
            if reply.is_success:
                lease.renewed()

    async def aclose(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self._client.aclose()


def _warn_if_in_clear(server: str) -> None:
    url = httpx.URL(server)
    if url.scheme == "http" and not _is_loopback(url.host):
        _warn_in_clear(url.host)


@functools.cache  # once per process (and server), not per worker built or per request
def _warn_in_clear(host: str) -> None:
    logger.warning(
        "the server %s is reached over plain http://: the worker's key and every job (questions, answers) "
        "cross the network readable by anyone on the way; use https:// (nginx.conf shows how)",
        host,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


class _Answer:
    """A job's answer as its workflow makes it, which a post can send (again) from any offset."""

    __slots__ = ("_grown", "done", "error", "suggested", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.suggested: list[str] = []
        self.done = False
        self.error: BaseException | None = None
        self._grown = asyncio.Event()

    async def make(self, workflow: Workflow, request: WorkflowRequest) -> None:
        try:
            async for item in workflow(request):
                chunk = item if isinstance(item, Chunk) else Chunk(str(item))
                self.suggested = chunk.suggested_questions or self.suggested
                if chunk.text:
                    self.texts.append(chunk.text)
                    self._wake()
        except Exception as exc:  # the workflow failed: the job ends with `fail`
            self.error = exc
        finally:
            self.done = True
            self._wake()

    def _wake(self) -> None:
        self._grown.set()
        self._grown = asyncio.Event()

    async def lines(self, start: int) -> AsyncIterator[bytes]:
        """The chunks from ``start`` as NDJSON, following the workflow until it ends."""
        at = start
        while True:
            while at < len(self.texts):
                yield json.dumps(self.texts[at]).encode() + b"\n"
                at += 1
            if self.done:
                return
            await self._grown.wait()


class _Lease:
    """When the server last took a report or an extend: past the visibility timeout without one,
    the job is someone else's (or nobody's) and retrying is pointless."""

    __slots__ = ("_last", "_visibility_s")

    def __init__(self, visibility_s: float) -> None:
        self._visibility_s = visibility_s
        self._last = time.monotonic()

    def renewed(self) -> None:
        self._last = time.monotonic()

    def lapsed(self) -> bool:
        return time.monotonic() - self._last > self._visibility_s


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _retry_delay_s(reply: httpx.Response | None, attempt: int) -> float:
    """The server's Retry-After (at most REPORT_RETRY_CAP_S), else a short backoff with jitter."""
    said = reply.headers.get("Retry-After", "") if reply is not None else ""
    if said.isdigit():
        return min(REPORT_RETRY_CAP_S, float(said))
    return min(REPORT_RETRY_CAP_S, REPORT_RETRY_S * 2.0**attempt) * random.uniform(0.5, 1.0)


async def _back_off(failures: int, exc: Exception) -> int:
    delay_s = min(BACKOFF_CAP_S, BACKOFF_S * 2**failures) * random.uniform(0.5, 1.0)
    logger.warning("guestqueue server unreachable (%s); trying again in %.1f s", exc, delay_s)
    await asyncio.sleep(delay_s)
    return failures + 1


def add_worker_parser(commands: Any) -> None:
    worker = commands.add_parser("worker", help="serve a pull line's jobs with a Python workflow")
    worker.add_argument("workflow", metavar="module:function", help="an async generator taking a WorkflowRequest")
    worker.add_argument("--server", required=True, help="guestqueue's address, e.g. https://queue.example.com")
    worker.add_argument("--line", required=True, help="the pull line's name")
    worker.add_argument(
        "--key",
        default=os.environ.get("GUEST_WORKER_KEY", ""),
        help="an API key with WORK on the line [GUEST_WORKER_KEY]",
    )
    worker.add_argument("--concurrency", type=int, default=1, help="jobs served at once (default 1)")
    worker.add_argument(
        "--visibility-timeout",
        type=float,
        default=30.0,
        dest="visibility_s",
        help="seconds a job stays ours without news (extended while it runs; default 30)",
    )
    add_app_dir(worker)


def add_app_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app-dir",
        default=".",
        help="where module:function is imported from, as uvicorn's --app-dir (default: the current directory)",
    )


def import_from_app_dir(args: argparse.Namespace) -> None:
    """``module:function`` is found next to where the user runs the command (a console script,
    unlike ``python -m``, does not look in the current directory by itself)."""
    sys.path.insert(0, os.path.abspath(args.app_dir))


def run_worker(args: argparse.Namespace) -> int:
    import_from_app_dir(args)
    try:
        workflow = load_workflow(args.workflow, named="module:function")
    except ValueError as exc:
        print(f"guestqueue worker: error: {exc}", file=sys.stderr)
        return 2
    if args.concurrency < 1 or not 1 <= args.visibility_s <= 43_200:
        print("guestqueue worker: error: --concurrency >= 1 and --visibility-timeout in 1-43200", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the worker's own

    async def serve() -> None:
        worker = PullWorker(
            args.server, args.line, args.key, workflow, concurrency=args.concurrency, visibility_s=args.visibility_s
        )
        logger.info("serving line %s of %s with %s", args.line, args.server, args.workflow)
        try:
            await worker.run()
        finally:
            await worker.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
