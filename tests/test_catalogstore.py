"""tenancy/store.py: the catalog survives a Redis that forgets (issue 21, point 4), over a real
redis-server that is flushed, and stopped and started again empty."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from guestqueue.tenancy.catalog import Catalog
from guestqueue.tenancy.store import CatalogStore, warn_if_forgetful

from .conftest import MockUpstream, ask, serve, wait_until
from .redis_server import RedisServer, run_redis

PREFIX = "gq-catalog-test"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to flush and restart."""
    with run_redis() as server:
        yield server


@pytest.fixture
async def redis(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def _until_redis_has(redis: aioredis.Redis, hash_key: str, field: str, timeout_s: float = 3.0) -> None:
    for _ in range(round(timeout_s / 0.05)):
        if await redis.hexists(hash_key, field):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{hash_key} {field} was not put back")


@asynccontextmanager
async def store(tmp_path: Path, name: str, redis: aioredis.Redis) -> AsyncIterator[CatalogStore]:
    kept = CatalogStore(Catalog(), db_path=str(tmp_path / f"{name}.db"), redis=redis, prefix=PREFIX)
    await kept.open()
    try:
        yield kept
    finally:
        await kept.close()


async def test_a_forgetful_redis_gets_the_newest_catalog_back_and_a_revoked_key_stays_revoked(
    tmp_path: Path,
    redis: aioredis.Redis,
) -> None:
    """Seen on main: a key made on instance 1 and revoked on instance 2 worked again on both after a
    flush and a restart of instance 1, which put back its own file's older catalog."""
    async with store(tmp_path, "one", redis) as one, store(tmp_path, "two", redis) as two:
        app = one.catalog.new_application("shop")
        await one.put_application(app)
        key, _ = one.catalog.new_key(app)
        await one.put_key(key)
        await one.put_line("run-time", {"upstream_kind": "pull", "application_id": app.id})
        await wait_until(lambda: key.id in two.catalog.keys, 3, "the key on instance two")
        await two.put_key(two.catalog.revoked(two.catalog.keys[key.id]))
        await wait_until(lambda: one.catalog.keys[key.id].revoked_at is not None, 3, "the revocation on one")
        await redis.flushall()
        await _until_redis_has(redis, f"{PREFIX}:catalog:keys", key.id)
        for instance in (one, two):
            assert "run-time" in instance.catalog.lines and instance.catalog.keys[key.id].revoked_at is not None
    await redis.flushall()
    async with store(tmp_path, "one", redis) as again:  # instance one restarts alone, on an empty Redis
        assert again.catalog.keys[key.id].revoked_at is not None, "a revoked key worked again"
        assert "run-time" in again.catalog.lines


async def test_an_instance_starting_with_an_older_file_takes_redis_newer_catalog(
    tmp_path: Path,
    redis: aioredis.Redis,
) -> None:
    async with store(tmp_path, "old", redis) as old:
        await old.put_application(old.catalog.new_application("first"))
    async with store(tmp_path, "new", redis) as new:
        await new.put_application(new.catalog.new_application("second"))
        key, _ = new.catalog.new_key(next(iter(new.catalog.applications.values())))
        await new.put_key(new.catalog.revoked(key))
    async with store(tmp_path, "old", redis) as old:  # its file says one application, Redis two
        assert {app.name for app in old.catalog.applications.values()} == {"first", "second"}
        assert await redis.get(f"{PREFIX}:catalog:version") == b"3", "nothing older was put back"


async def test_a_change_made_while_redis_is_empty_is_kept_with_the_rest(
    tmp_path: Path,
    own_redis: RedisServer,
    redis: aioredis.Redis,
) -> None:
    async with store(tmp_path, "one", redis) as one, store(tmp_path, "two", redis) as two:
        for name in ("a", "b"):
            await one.put_application(one.catalog.new_application(name))
        await wait_until(lambda: len(two.catalog.applications) == 2, 3, "two's applications")
        own_redis.stop()
        own_redis.start()  # restarted empty, as without persistence
        late = one.catalog.new_application("made right after the restart")
        for _ in range(50):  # the client reconnects
            try:
                await one.put_application(late)
                break
            except Exception:
                await asyncio.sleep(0.1)
        await wait_until(lambda: late.id in two.catalog.applications, 3, "the late change on two")
        assert len(two.catalog.applications) == 3, "the change came with the rest, not alone"


async def test_run_time_lines_and_keys_keep_working_on_every_instance_through_a_flush(
    tmp_path: Path,
    own_redis: RedisServer,
    upstream: MockUpstream,
) -> None:
    """Seen on main: after a flush every run-time line closed and every tenant key stopped working
    on every running instance until one restarted."""
    shared: dict[str, Any] = {
        "redis_url": own_redis.url,
        "redis_prefix": PREFIX,
        "admin_api_key": "the-super-admin-key-0123456789",
        "outbound_allow": "127.0.0.0/8",
        "upstream_url": upstream.url(chunks=1),
    }
    admin = {"X-API-Key": "the-super-admin-key-0123456789"}
    async with (
        serve(db_path=str(tmp_path / "one.db"), **shared) as one,
        serve(db_path=str(tmp_path / "two.db"), **shared) as two,
        httpx.AsyncClient(timeout=10) as client,
    ):
        api = one.base.removesuffix("/guest")
        app = (await client.post(f"{api}/admin/applications", json={"name": "t"}, headers=admin)).json()["id"]
        key = (await client.post(f"{api}/admin/applications/{app}/keys", json={"role": "admin"}, headers=admin)).json()[
            "key"
        ]
        made = await client.post(
            f"{api}/admin/lines",
            headers={"X-API-Key": key},
            json={"name": "late", "application_id": app, "upstream_url": upstream.url(chunks=1), "public": False},
        )
        assert made.status_code == 201, made.text
        lines = [running.base.replace("/guest", "/lines/late") for running in (one, two)]
        await wait_until(lambda: all(r.guest.lineup is not None and "late" in r.guest.lineup for r in (one, two)), 3)
        redis = aioredis.Redis.from_url(own_redis.url)
        await redis.flushall()
        await _until_redis_has(redis, f"{PREFIX}:catalog:lines", "late")
        await redis.aclose()
        for url in lines:
            events = await ask(client, url, headers={"X-API-Key": key})
            assert events[-1].name == "workflow_complete", url


async def test_start_up_says_when_redis_keeps_nothing_on_disk(
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="guestqueue.tenancy.catalog"):
        await warn_if_forgetful(redis)
    assert "Redis keeps nothing on disk" in caplog.text
    caplog.clear()
    # A save point is "keeps something" too, and unlike appendonly writes no file where the tests run.
    await redis.config_set("save", "3600 1")
    try:
        with caplog.at_level(logging.WARNING, logger="guestqueue.tenancy.catalog"):
            await warn_if_forgetful(redis)
    finally:
        await redis.config_set("save", "")
    assert "keeps nothing" not in caplog.text
