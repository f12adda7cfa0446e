"""Webhooks over real HTTP: a receiver served by uvicorn, guestqueue posting to it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from guestqueue.linespec import Webhook
from guestqueue.webhooks import Outbox

from .conftest import MockUpstream, ask, serve, wait_until
from .support.webhooks import HOOK_SECRET, Receiver, receiving


def _config(tmp_path: Path, upstream: MockUpstream, url: str, events: str = '["completed"]') -> str:
    path = tmp_path / "guestqueue.toml"
    path.write_text(
        f'[lines.w]\nupstream_url = "{upstream.url(chunks=1)}"\n'
        f'[[lines.w.webhooks]]\nurl = "{url}"\nevents = {events}\nsecret = "{HOOK_SECRET}"\n'
    )
    return str(path)


async def test_a_receiver_that_fails_twice_gets_one_delivery_three_times_signed(
    tmp_path: Path,
    upstream: MockUpstream,
) -> None:
    receiver = Receiver(fail=2)
    async with (
        receiving(receiver) as url,
        serve(
            config=_config(tmp_path, upstream, url), webhook_backoff_s=0.05, db_path=str(tmp_path / "g.db")
        ) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        events = await ask(client, running.base.removesuffix("/guest") + "/lines/w", "tell the hook")
        await wait_until(lambda: len(receiver.processed) == 1, timeout_s=10)
        metrics = (await client.get(f"{running.base}/metrics")).text
    assert events[-1].name == "workflow_complete"
    assert len(receiver.seen) == 3, "two failures, then the one that worked"
    ids = {headers["x-guestqueue-delivery"] for headers, _ in receiver.seen}
    assert len(ids) == 1 and receiver.processed == ids, "one delivery id on every attempt"
    for headers, body in receiver.seen:
        expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-guestqueue-signature"], expected)
        assert headers["x-guestqueue-event"] == "completed"
    assert 'guestqueue_webhook_deliveries_total{result="delivered"} 1.0' in metrics
    assert 'guestqueue_webhook_deliveries_total{result="retried"} 2.0' in metrics
    assert 'guestqueue_webhook_delivery_seconds_count{result="error"} 2.0' in metrics
    payload = json.loads(receiver.seen[-1][1])
    assert payload["event"] == "completed" and payload["line"] == "w"
    assert payload["data"]["request_id"] == events[-1].data["request_id"]


async def test_a_delivery_that_fails_every_retry_is_listed_with_its_error(
    tmp_path: Path,
    upstream: MockUpstream,
) -> None:
    receiver = Receiver(down=True)
    async with (
        receiving(receiver) as url,
        serve(
            config=_config(tmp_path, upstream, url), webhook_backoff_s=0.02, db_path=str(tmp_path / "g.db")
        ) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        await ask(client, running.base.removesuffix("/guest") + "/lines/w", "nobody listens")
        api = running.base.removesuffix("/guest")

        async def listed() -> list[Any]:
            return list((await client.get(f"{api}/admin/callback_errors")).json()["errors"])

        for _ in range(200):
            if await listed():
                break
            await asyncio.sleep(0.05)
        errors = await listed()
    assert len(receiver.seen) == 4, "the first attempt and three retries"
    assert errors and errors[0]["attempts"] == 4 and errors[0]["last_error"] == "HTTP 503"


async def test_a_restart_sends_what_was_still_pending(tmp_path: Path, upstream: MockUpstream) -> None:
    receiver = Receiver(down=True)
    db = str(tmp_path / "g.db")
    async with receiving(receiver) as url:
        config = _config(tmp_path, upstream, url)
        # A long backoff: the one retry left is due long after this instance stops.
        async with (
            serve(config=config, webhook_backoff_s=60.0, db_path=db) as running,
            httpx.AsyncClient(timeout=10) as client,
        ):
            await ask(client, running.base.removesuffix("/guest") + "/lines/w", "before the restart")
            await wait_until(lambda: len(receiver.seen) == 1, timeout_s=10)
        first_id = receiver.seen[0][0]["x-guestqueue-delivery"]
        receiver.down = False
        async with serve(config=config, webhook_backoff_s=60.0, db_path=db):
            await wait_until(lambda: bool(receiver.processed), timeout_s=10)
    assert receiver.processed == {first_id}, "the same delivery, sent again by the next run"


async def test_a_threshold_fires_once_per_crossing(tmp_path: Path, upstream: MockUpstream) -> None:
    receiver = Receiver()
    async with receiving(receiver) as url:
        path = tmp_path / "guestqueue.toml"
        path.write_text(
            f'[lines.a]\nupstream_url = "{upstream.url(chunks=1, first=0.6)}"\nalert_queue_size = 2\n'
            f'max_concurrent_requests = 1\n[[lines.a.webhooks]]\nurl = "{url}"\n'
            f'events = ["line_threshold"]\nsecret = "{HOOK_SECRET}"\n'
        )
        async with serve(config=str(path), webhook_backoff_s=0.05) as running, httpx.AsyncClient(timeout=30) as client:
            chat = running.base.removesuffix("/guest") + "/lines/a"
            guests = [asyncio.create_task(ask(client, chat, f"q{n}")) for n in range(5)]
            await asyncio.gather(*guests)
            await wait_until(lambda: len(receiver.seen) >= 1, timeout_s=5)
            await asyncio.sleep(0.5)  # a second delivery, had there been one, would be in by now
    bodies = [json.loads(body) for _, body in receiver.seen]
    assert len(bodies) == 1, "the line stayed above the threshold: one alert"
    assert bodies[0]["event"] == "line_threshold"
    assert bodies[0]["data"]["metric"] == "queue_size" and bodies[0]["data"]["threshold"] == 2


async def test_a_slack_or_teams_webhook_gets_a_text_body() -> None:
    sent: list[bytes] = []

    def slack(request: httpx.Request) -> httpx.Response:  # Slack is not ours: a mock transport stands in
        sent.append(request.content)
        return httpx.Response(200, text="ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(slack)) as client:
        outbox = Outbox(db_path="", client=client)
        await outbox.open()
        hook = Webhook("https://hooks.slack.com/services/T0/B0/x", ("line_threshold",), HOOK_SECRET)
        outbox.post("a", hook, "line_threshold", {"text": "guestqueue line a: queue_size is 9 (threshold 5)"})
        await wait_until(lambda: bool(sent))
        await outbox.close()
    assert json.loads(sent[0]) == {"text": "guestqueue line a: queue_size is 9 (threshold 5)"}


async def test_with_redis_every_event_also_goes_to_the_shared_stream(
    tmp_path: Path,
    upstream: MockUpstream,
    redis_url: str,
    redis_prefix: str,
) -> None:
    async with (
        serve(upstream_url=upstream.url(chunks=1), redis_url=redis_url, redis_prefix=redis_prefix) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        events = await ask(client, running.base, "into the stream")
        request_id = events[-1].data["request_id"]
        redis = aioredis.from_url(redis_url)
        entries: list[Any] = []
        try:
            for _ in range(100):
                entries = list(await redis.xrange(f"{redis_prefix}:events") or [])
                if entries:
                    break
                await asyncio.sleep(0.05)
        finally:
            await redis.aclose()
    ((_, fields),) = entries
    assert fields[b"line"] == b"guest" and fields[b"event"] == b"completed"
    assert json.loads(fields[b"data"])["request_id"] == request_id


async def test_with_redis_a_pending_delivery_is_sent_by_another_instance(
    tmp_path: Path,
    upstream: MockUpstream,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """The instance that made the delivery stops (its own file gone with it); another one, with
    another file but the same Redis, sends what was pending; and every instance lists the failures."""
    receiver = Receiver(down=True)
    shared: dict[str, Any] = {"redis_url": redis_url, "redis_prefix": redis_prefix, "webhook_backoff_s": 1.0}
    async with receiving(receiver) as url:
        config = _config(tmp_path, upstream, url)
        async with (
            serve(config=config, db_path=str(tmp_path / "a.db"), **shared) as first,
            httpx.AsyncClient(timeout=10) as client,
        ):
            await ask(client, first.base.removesuffix("/guest") + "/lines/w", "made on the first instance")
            await wait_until(lambda: len(receiver.seen) == 1, timeout_s=10)
        first_id = receiver.seen[0][0]["x-guestqueue-delivery"]
        receiver.down = False
        async with serve(config=config, db_path=str(tmp_path / "b.db"), **shared):
            await wait_until(lambda: bool(receiver.processed), timeout_s=10)
        assert receiver.processed == {first_id}, "the same delivery, sent by the other instance"

        receiver.down = True
        fast = {**shared, "webhook_backoff_s": 0.02}
        async with (
            serve(config=config, db_path=str(tmp_path / "c.db"), **fast) as third,
            serve(config=config, db_path=str(tmp_path / "d.db"), **fast) as fourth,
            httpx.AsyncClient(timeout=10) as client,
        ):
            await ask(client, third.base.removesuffix("/guest") + "/lines/w", "nobody listens")
            listed: list[Any] = []
            for _ in range(200):
                listed = (await client.get(f"{fourth.base.removesuffix('/guest')}/admin/callback_errors")).json()[
                    "errors"
                ]
                if listed:
                    break
                await asyncio.sleep(0.05)
    assert len(listed) == 1 and listed[0]["attempts"] == 4 and listed[0]["last_error"] == "HTTP 503"
