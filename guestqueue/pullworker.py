"""``guestqueue worker``: serve a pull line's jobs with a Python workflow, from anywhere.

The worker needs no inbound port (a GPU box behind NAT): it long-polls
``jobs/receive``, runs the workflow (the ``python`` upstream's signature: an
async generator taking a :class:`~guestqueue.upstream.WorkflowRequest`),
streams the chunks back as one NDJSON body, then ``complete`` (or ``fail``).
While a job runs its lease is extended every third of the visibility timeout.
A lost connection is retried with exponential backoff and jitter; a receipt
that is gone (410) means the job went elsewhere, and it is dropped. A plain
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
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .upstream import Chunk, Workflow, WorkflowRequest, load_workflow

logger = logging.getLogger("guestqueue.worker")
BACKOFF_S, BACKOFF_CAP_S = 0.5, 30.0
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
                    json={"wait_sec": 20, "max_jobs": min(free, MAX_JOBS_PER_RECEIVE),
                          "visibility_timeout_sec": self._visibility_s},
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
        receipt = job["receipt"]
        url = f"{self._api}/jobs/{receipt}"
        request = WorkflowRequest(job["job_id"], **job["request"])
        suggested: list[str] = []
        keeper = asyncio.create_task(self._keep_leased(url))

        async def lines() -> AsyncIterator[bytes]:
            async for item in self._workflow(request):
                chunk = item if isinstance(item, Chunk) else Chunk(str(item))
                suggested[:] = chunk.suggested_questions or suggested
                if chunk.text:
                    yield json.dumps(chunk.text).encode() + b"\n"

        try:
            sent = await self._client.post(
                f"{url}/chunks", content=lines(), headers={**self._headers, "Content-Type": "application/x-ndjson"}
            )
            if sent.status_code == 410:
                return  # the lease ran out: the job went to another worker
            sent.raise_for_status()
            done = await self._client.post(
                f"{url}/complete", headers=self._headers, json={"suggested_questions": suggested}
            )
            if done.is_success:
                self.served += 1
                logger.info("job %s answered (%d served)", job["job_id"], self.served)
        except Exception as exc:  # the workflow (or the connection) failed: say so, if we still can
            logger.warning("job %s failed: %s: %s", job["job_id"], type(exc).__name__, exc)
            try:
                await self._client.post(
                    f"{url}/fail",
                    headers=self._headers,
                    json={"error": f"{type(exc).__name__}: {exc}"[:500], "retryable": isinstance(exc, httpx.HTTPError)},
                )
            except httpx.HTTPError:
                pass  # its lease runs out and the job goes back to the line
        finally:
            keeper.cancel()

    async def _keep_leased(self, url: str) -> None:
        while True:
            await asyncio.sleep(self._visibility_s / 3)
            try:
                await self._client.post(
                    f"{url}/extend", headers=self._headers, json={"visibility_timeout_sec": self._visibility_s}
                )
            except httpx.HTTPError as exc:
                logger.warning("could not extend %s: %s", url, exc)

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
        "cross the network readable by anyone on the way; use https:// (nginx.conf shows how)", host,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


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
    worker.add_argument("--key", default=os.environ.get("GUEST_WORKER_KEY", ""),
                        help="an API key with WORK on the line [GUEST_WORKER_KEY]")
    worker.add_argument("--concurrency", type=int, default=1, help="jobs served at once (default 1)")
    worker.add_argument("--visibility-timeout", type=float, default=30.0, dest="visibility_s",
                        help="seconds a job stays ours without news (extended while it runs; default 30)")


def run_worker(args: argparse.Namespace) -> int:
    try:
        workflow = load_workflow(args.workflow)
    except ValueError as exc:
        print(f"guestqueue worker: error: {exc}", file=sys.stderr)
        return 2
    if args.concurrency < 1 or not 1 <= args.visibility_s <= 43_200:
        print("guestqueue worker: error: --concurrency >= 1 and --visibility-timeout in 1-43200", file=sys.stderr)
        return 2
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the worker's own

    async def serve() -> None:
        worker = PullWorker(args.server, args.line, args.key, workflow, concurrency=args.concurrency,
                            visibility_s=args.visibility_s)
        logger.info("serving line %s of %s with %s", args.line, args.server, args.workflow)
        try:
            await worker.run()
        finally:
            await worker.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
