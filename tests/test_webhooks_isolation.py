"""Issue 20, point 9: one tenant's dead webhook endpoint delayed everyone's deliveries (five events to
A's hanging receiver held B's delivery back 50 s). Each URL now has its own lane."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from guestqueue.linespec import Webhook
from guestqueue.webhooks import MAX_IN_FLIGHT, Outbox

from .conftest import MockUpstream, ask, serve, serve_app, wait_until
from .support.webhooks import HOOK_SECRET, Receiver, receiving

B_WITHIN_S = 3.0  # loose: B's delivery takes milliseconds; behind A's five it took 50 s


class Hanging:
    """A receiver that never answers while the test runs (each request is held until :meth:`release`)."""

    def __init__(self) -> None:
        self.seen = 0
        self._released = asyncio.Event()

    async def hook(self, request: Request) -> Response:
        await request.body()
        self.seen += 1
        await self._released.wait()
        return JSONResponse({"ok": True})

    def release(self) -> None:
        self._released.set()


@asynccontextmanager
async def hanging(receiver: Hanging) -> AsyncIterator[str]:
    async with serve_app(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as base:
        try:
            yield f"{base}/hook"
        finally:
            receiver.release()  # uvicorn waits for the requests it still holds before it stops


def _two_lines(tmp_path: Path, upstream: MockUpstream, a_url: str, b_url: str) -> str:
    path = tmp_path / "guestqueue.toml"
    text = ""
    for line, url in (("a", a_url), ("b", b_url)):
        text += (
            f'[lines.{line}]\nupstream_url = "{upstream.url(chunks=1)}"\n'
            f'[[lines.{line}.webhooks]]\nurl = "{url}"\nevents = ["completed"]\nsecret = "{HOOK_SECRET}"\n'
        )
    path.write_text(text)
    return str(path)


async def test_a_hanging_receiver_does_not_delay_another_lines_delivery(
    tmp_path: Path,
    upstream: MockUpstream,
) -> None:
    dead, live = Hanging(), Receiver()
    async with (
        hanging(dead) as dead_url,
        receiving(live) as live_url,
        serve(
            config=_two_lines(tmp_path, upstream, dead_url, live_url),
            webhook_backoff_s=0.05,
            db_path=str(tmp_path / "g.db"),
        ) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        api = running.base.removesuffix("/guest")
        for n in range(5):
            await ask(client, f"{api}/lines/a", f"for the dead end {n}")
        await wait_until(lambda: dead.seen == 1, timeout_s=5, message="A's first delivery in flight")
        await ask(client, f"{api}/lines/b", "for the live one")
        await wait_until(lambda: bool(live.processed), timeout_s=B_WITHIN_S, message="B's delivery")
    assert dead.seen == 1, "A's URL gets one request at a time: the other four wait in its lane"


async def test_with_redis_a_hanging_receiver_does_not_delay_another_lines_delivery(
    tmp_path: Path,
    upstream: MockUpstream,
    redis_url: str,
    redis_prefix: str,
) -> None:
    dead, live = Hanging(), Receiver()
    shared: dict[str, Any] = {"redis_url": redis_url, "redis_prefix": redis_prefix, "webhook_backoff_s": 0.05}
    async with hanging(dead) as dead_url, receiving(live) as live_url:
        config = _two_lines(tmp_path, upstream, dead_url, live_url)
        async with (
            serve(config=config, db_path=str(tmp_path / "a.db"), **shared) as first,
            serve(config=config, db_path=str(tmp_path / "b.db"), **shared) as second,
            httpx.AsyncClient(timeout=10) as client,
        ):
            apis = [running.base.removesuffix("/guest") for running in (first, second)]
            for n in range(5):  # both instances hold some of A's deliveries
                await ask(client, f"{apis[n % 2]}/lines/a", f"for the dead end {n}")
            await wait_until(lambda: dead.seen >= 1, timeout_s=5, message="A's first delivery in flight")
            await ask(client, f"{apis[1]}/lines/b", "for the live one")
            await wait_until(lambda: bool(live.processed), timeout_s=B_WITHIN_S, message="B's delivery")
    assert dead.seen <= 2, "A's URL gets one request at a time from each instance"


async def _answer(request: Request) -> Response:
    await request.body()
    return StreamingResponse(iter([b'data: {"answer_chunk": "hi"}\n\n']), media_type="text/event-stream")


async def test_many_hanging_receivers_leave_the_upstreams_their_connections(
    tmp_path: Path,
    upstream: MockUpstream,
) -> None:
    """Webhooks once shared the upstreams' client: sixteen hanging receivers took all 14 connections
    of its default pool and another line's guest waited 10 s. Now the outbox has clients (and pools)
    of its own, and at most MAX_IN_FLIGHT attempts at once: more hanging receivers than both."""
    dead = Hanging()
    hooks_per_line = 18  # two lines of them: more than MAX_IN_FLIGHT (32), within the 20 a line may have
    fresh_upstream = Starlette(routes=[Route("/chat", _answer, methods=["POST"])])  # no idle connection to reuse
    async with hanging(dead) as dead_url, serve_app(fresh_upstream) as fresh:
        path = tmp_path / "guestqueue.toml"
        path.write_text(
            "".join(
                f'[lines.{line}]\nupstream_url = "{upstream.url(chunks=1)}"\n'
                + "".join(
                    f'[[lines.{line}.webhooks]]\nurl = "{dead_url}?line={line}&n={n}"\nevents = ["completed"]\n'
                    f'secret = "{HOOK_SECRET}"\n'
                    for n in range(hooks_per_line)
                )
                for line in ("a", "c")
            )
            + f'[lines.b]\nupstream_url = "{fresh}/chat"\n'
        )
        async with serve(config=str(path)) as running, httpx.AsyncClient(timeout=10) as client:
            api = running.base.removesuffix("/guest")
            await ask(client, f"{api}/lines/a", "for eighteen dead ends")
            await ask(client, f"{api}/lines/c", "and eighteen more")
            await wait_until(lambda: dead.seen == MAX_IN_FLIGHT, timeout_s=5, message="the cap's worth in flight")
            async with asyncio.timeout(B_WITHIN_S):
                events = await ask(client, f"{api}/lines/b", "a guest of another line")
    assert events[-1].name == "workflow_complete"
    assert dead.seen == MAX_IN_FLIGHT, "the others wait for a slot"


async def test_one_urls_deliveries_go_in_order_one_at_a_time_beside_another_urls() -> None:
    sent: dict[str, list[int]] = {"x": [], "y": []}
    in_flight: Counter[str] = Counter()
    most: Counter[str] = Counter()
    both = 0

    async def receive(request: httpx.Request) -> httpx.Response:
        nonlocal both
        host = request.url.host
        in_flight[host] += 1
        most[host] = max(most[host], in_flight[host])
        both = max(both, sum(in_flight.values()))
        await asyncio.sleep(0.005)
        sent[host].append(json.loads(request.content)["data"]["n"])
        in_flight[host] -= 1
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as client:
        outbox = Outbox(db_path="", client=client)
        await outbox.open()
        for n in range(20):
            for host in ("x", "y"):
                outbox.post("a", Webhook(f"http://{host}/hook", ("completed",), HOOK_SECRET), "completed", {"n": n})
        await wait_until(lambda: len(sent["x"]) + len(sent["y"]) == 40)
        await wait_until(lambda: not outbox._lanes, message="idle lanes dropped")
        await outbox.close()
    assert sent == {"x": list(range(20)), "y": list(range(20))}, "each URL's deliveries in the order posted"
    assert most == {"x": 1, "y": 1}, "one request at a time per URL"
    assert both == 2, "the two URLs' lanes ran side by side"
    assert outbox.results == {"delivered": 40, "retried": 0, "failed": 0}


async def test_attempts_in_flight_stay_under_the_cap() -> None:
    released = asyncio.Event()
    in_flight = most = 0

    async def receive(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await released.wait()
        in_flight -= 1
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as client:
        outbox = Outbox(db_path="", client=client, max_in_flight=3)
        await outbox.open()
        for n in range(8):
            outbox.post("a", Webhook(f"http://host-{n}/hook", ("completed",), HOOK_SECRET), "completed", {"n": n})
        await wait_until(lambda: in_flight == 3)
        await asyncio.sleep(0.05)  # a fourth, had the cap let one through, would be in by now
        assert most == 3
        released.set()
        await wait_until(lambda: outbox.results["delivered"] == 8)
        await outbox.close()
    assert most == 3


async def test_closing_stops_lanes_held_by_a_hanging_receiver() -> None:
    asked: list[str] = []

    async def receive(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as client:
        outbox = Outbox(db_path="", client=client)
        await outbox.open()
        for n in range(3):
            outbox.post("a", Webhook("http://dead/hook", ("completed",), HOOK_SECRET), "completed", {"n": n})
        await wait_until(lambda: len(asked) == 1)
        outbox.post("a", Webhook("http://other/hook", ("completed",), HOOK_SECRET), "completed", {})  # not started yet
        async with asyncio.timeout(5):
            await outbox.close()
        outbox.post("a", Webhook("http://late/hook", ("completed",), HOOK_SECRET), "completed", {})
        await asyncio.sleep(0.05)
    assert asked == ["http://dead/hook"]
    assert repr(outbox) == "Outbox(pending=0, lanes=0, {'delivered': 0, 'retried': 0, 'failed': 0})"
