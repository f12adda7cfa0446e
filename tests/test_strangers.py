"""Issue 20: what a tenant (an application's admin or member key) sends through the admin API can
no longer hurt the server or another tenant. Each test is one finding of the review, over a real
server on loopback (and a real redis-server where the point is about several instances)."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from .conftest import MockUpstream, Running, ask, serve, stream_events, wait_until

ADMIN = {"X-API-Key": "the-super-admin-key-0123456789"}
TOKEN_SECRET = "a-token-secret-of-at-least-32-characters!"


@asynccontextmanager
async def tenants(
    tmp_path: Path, upstream: MockUpstream, **overrides: Any
) -> AsyncIterator[tuple[Running, str, httpx.AsyncClient, dict[str, str], dict[str, str]]]:
    """A server with two applications: yields it, the /api/v1 URL, a client, and the admin keys of
    tenant A and tenant B."""
    settings: dict[str, Any] = {
        "admin_api_key": ADMIN["X-API-Key"],
        "db_path": str(tmp_path / "gq.db"),
        "upstream_url": upstream.url(chunks=1),
        "token_secret": TOKEN_SECRET,
        **overrides,
    }
    async with serve(**settings) as running, httpx.AsyncClient(timeout=10) as client:
        api = running.base.removesuffix("/guest")
        keys = []
        for name in ("a", "b"):
            app = (await client.post(f"{api}/admin/applications", json={"name": name}, headers=ADMIN)).json()["id"]
            made = await client.post(f"{api}/admin/applications/{app}/keys", json={"role": "admin"}, headers=ADMIN)
            keys.append({"X-API-Key": made.json()["key"], "app": app})
        yield running, api, client, *keys  # type: ignore[misc]


def _key(tenant: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": tenant["X-API-Key"]}


async def test_a_tenant_cannot_make_the_server_import_a_module(tmp_path: Path, upstream: MockUpstream) -> None:
    """Point 1: ``upstream_url: "this:nothing"`` answered 201 and imported ``this``."""
    marker = tmp_path / "imported"
    module = tmp_path / "gq_hostile_module.py"
    module.write_text(f"open({str(marker)!r}, 'w').write('ran')\nasync def answer(request):\n    yield 'x'\n")
    sys.path.insert(0, str(tmp_path))
    try:
        async with tenants(tmp_path, upstream) as (running, api, client, a, _):
            for body in (
                {"upstream_url": "gq_hostile_module:answer"},
                {"upstream_url": "gq_hostile_module:answer", "upstream_kind": "python"},
            ):
                made = await client.post(
                    f"{api}/admin/lines", headers=_key(a), json={"name": "evil", "application_id": a["app"], **body}
                )
                assert made.status_code == 422 and made.json()["code"] == "invalid_field", made.text
                assert "upstream_url" in made.json()["error"] and "operator" in made.json()["error"]
            # Not even the super admin: code comes from the file or GUEST_*, never the admin API.
            made = await client.post(
                f"{api}/admin/lines", headers=ADMIN, json={"name": "evil", "upstream_url": "gq_hostile_module:answer"}
            )
            assert made.status_code == 422, made.text
            line = await client.post(
                f"{api}/admin/lines",
                headers=_key(a),
                json={"name": "ok", "application_id": a["app"], "upstream_kind": "pull"},
            )
            changed = await client.put(
                f"{api}/admin/lines/ok",
                headers=_key(a),
                json={"upstream_kind": "auto", "upstream_url": "gq_hostile_module:answer"},
            )
            assert line.status_code == 201 and changed.status_code == 422, changed.text
            assert (await client.get(f"{running.base}/health")).json()["status"] == "ok"
        assert not marker.exists(), "the module was imported"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gq_hostile_module", None)


async def test_one_stored_line_that_cannot_open_never_stops_start_up(tmp_path: Path, upstream: MockUpstream) -> None:
    """Point 2: a stored line that no longer validates or opens made start-up fail forever."""
    db = tmp_path / "gq.db"
    async with tenants(tmp_path, upstream, db_path=str(db)) as (_, api, client, a, _b):
        made = await client.post(
            f"{api}/admin/lines",
            headers=_key(a),
            json={"name": "fine", "application_id": a["app"], "upstream_kind": "pull"},
        )
        assert made.status_code == 201, made.text
    # What an older version kept, or a bound added since: written as the store writes it.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO lines (name, body) VALUES (?, ?)",
            ("crlf", json.dumps({"upstream_url": "http://up.example/\r\nX: 1", "application_id": a["app"]})),
        )
        conn.execute(
            "INSERT OR REPLACE INTO lines (name, body) VALUES (?, ?)",
            ("huge", json.dumps({"max_concurrent_requests": 2**64, "application_id": a["app"]})),
        )
        conn.execute(
            "INSERT OR REPLACE INTO lines (name, body) VALUES (?, ?)",
            ("code", json.dumps({"upstream_url": "no_such_module_here:answer"})),
        )
    async with (
        serve(admin_api_key=ADMIN["X-API-Key"], db_path=str(db), upstream_url=upstream.url(chunks=1)) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        api = running.base.removesuffix("/guest")
        health = (await client.get(f"{running.base}/health")).json()
        assert health["status"] == "degraded" and sorted(health["lines"]) == ["fine", "guest"]
        for name in ("crlf", "huge", "code"):
            assert any(problem.startswith(f"line {name} is not served") for problem in health["problems"]), name
        assert [e.name for e in await ask(client, running.base)][-1] == "workflow_complete"
        # The admin API can still fix one and delete another.
        fixed = await client.put(f"{api}/admin/lines/huge", headers=_key(a), json={"max_concurrent_requests": 2})
        assert fixed.status_code == 200, fixed.text
        assert (await client.delete(f"{api}/admin/lines/crlf", headers=_key(a))).status_code == 200
        assert (await client.delete(f"{api}/admin/lines/code", headers=ADMIN)).status_code == 200
        await wait_until(lambda: running.guest.lineup is not None and "huge" in running.guest.lineup, 5)
        health = (await client.get(f"{running.base}/health")).json()
        assert health["status"] == "ok", health["problems"]


async def test_one_admin_call_cannot_exhaust_memory_or_cpu(tmp_path: Path, upstream: MockUpstream) -> None:
    """Point 3: 2**64 slots, 1e9 by a MANAGE member, a tick every 1e-300 s: each is a 422 naming the
    key and its bound, and the server goes on answering."""
    async with tenants(tmp_path, upstream) as (running, api, client, a, _):
        made = await client.post(
            f"{api}/admin/lines",
            headers=_key(a),
            json={"name": "l", "application_id": a["app"], "upstream_kind": "pull"},
        )
        assert made.status_code == 201
        app = a["app"]
        member = await client.post(
            f"{api}/admin/applications/{app}/keys", headers=_key(a), json={"permissions": {"l": ["MANAGE"]}}
        )
        manage = {"X-API-Key": member.json()["key"]}
        for key, value, bound in (
            ("max_concurrent_requests", 2**64, "<= 10_000"),
            ("max_concurrent_requests", 10**9, "<= 10_000"),
            ("position_update_sec", 1e-300, ">= 0.05"),
            ("max_queue_size", 10**15, "<= 1_000_000"),
        ):
            answer = await client.put(f"{api}/admin/lines/l", headers=manage, json={key: value})
            assert answer.status_code == 422 and key in answer.json()["error"] and bound in answer.json()["error"]
        health = await client.get(f"{running.base}/health", timeout=2)
        assert health.status_code == 200 and health.json()["lines"]["l"]["status"] == "ok"


async def test_a_lines_upstream_key_only_goes_to_the_url_it_was_set_with(
    tmp_path: Path,
    upstream: MockUpstream,
) -> None:
    """Point 7: changing upstream_url kept the hidden key, which then went to the attacker's host."""
    url, tag = upstream.tagged(chunks=1)
    thief, stolen = upstream.tagged(chunks=1)
    async with tenants(tmp_path, upstream, outbound_allow="127.0.0.0/8") as (running, api, client, a, _):
        made = await client.post(
            f"{api}/admin/lines",
            headers=ADMIN,
            json={
                "name": "paid",
                "application_id": a["app"],
                "upstream_url": url,
                "upstream_api_key": "sk-the-operators-key",
            },
        )
        assert made.status_code == 201, made.text
        lines = running.base.replace("/guest", "/lines")
        await ask(client, f"{lines}/paid")
        assert (await upstream.acalls(tag))[-1]["authorization"] == "Bearer sk-the-operators-key"
        app = a["app"]
        member = await client.post(
            f"{api}/admin/applications/{app}/keys", headers=_key(a), json={"permissions": {"paid": ["MANAGE", "READ"]}}
        )
        manage = {"X-API-Key": member.json()["key"]}
        shown = (await client.get(f"{api}/admin/lines/paid", headers=manage)).json()
        assert shown["upstream_api_key"] == "***"
        # GET then PUT of what it showed (URL and key masked) leaves the URL and the key as they were.
        again = await client.put(f"{api}/admin/lines/paid", headers=manage, json={**shown, "mode": "open"})
        assert again.status_code == 200, again.text
        await ask(client, f"{lines}/paid")
        assert (await upstream.acalls(tag))[-1]["authorization"] == "Bearer sk-the-operators-key"
        moved = await client.put(f"{api}/admin/lines/paid", headers=manage, json={"upstream_url": thief})
        assert moved.status_code == 200 and moved.json()["upstream_api_key"] == ""
        await ask(client, f"{lines}/paid")
        assert (await upstream.acalls(stolen))[-1]["authorization"] is None, "the key went to the new host"


async def test_private_lines_cannot_be_probed(tmp_path: Path, upstream: MockUpstream) -> None:
    """Point 12: a caller who may not see a line gets exactly the answer for a missing one."""
    async with tenants(tmp_path, upstream) as (_, api, client, a, b):
        made = await client.post(
            f"{api}/admin/lines",
            headers=_key(a),
            json={"name": "secret", "application_id": a["app"], "upstream_kind": "pull", "public": False},
        )
        assert made.status_code == 201, made.text
        for headers in ({}, _key(b)):
            probe = await client.get(f"{api}/admin/auth/permissions/secret", headers=headers)
            missing = await client.get(f"{api}/admin/auth/permissions/nothing", headers=headers)
            assert (probe.status_code, probe.json()) == (
                404,
                {**missing.json(), "error": missing.json()["error"].replace("nothing", "secret")},
            )
        probe = await client.get(f"{api}/admin/lines/secret", headers=_key(b))
        missing = await client.get(f"{api}/admin/lines/nothing", headers=_key(b))
        assert probe.status_code == missing.status_code == 404
        assert probe.json()["code"] == missing.json()["code"]
        put = await client.put(f"{api}/admin/lines/secret", headers=_key(b), json={"mode": "paused"})
        assert put.status_code == 404
        mine = await client.get(f"{api}/admin/auth/permissions/secret", headers=_key(a))
        assert mine.status_code == 200 and "MANAGE" in mine.json()["permissions"]


async def test_names_anonymous_callers_reach_are_the_super_admins(tmp_path: Path, upstream: MockUpstream) -> None:
    """Point 13: a tenant made the line ``guest`` (the default chat page's) or took ``gpt-4o``."""
    config = tmp_path / "lines.toml"
    config.write_text(f'[lines.main]\nupstream_url = "{upstream.url(chunks=1)}"\n')
    async with tenants(tmp_path, upstream, config=str(config)) as (running, api, client, a, _):
        app = a["app"]
        squat = await client.post(
            f"{api}/admin/lines",
            headers=_key(a),
            json={"name": "guest", "application_id": app, "upstream_kind": "pull"},
        )
        assert squat.status_code == 403 and "guest" in squat.json()["error"]
        alias = await client.post(
            f"{api}/admin/lines",
            headers=_key(a),
            json={"name": "mine", "application_id": app, "upstream_kind": "pull", "openai_model": "gpt-4o"},
        )
        assert alias.status_code == 403 and "openai_model" in alias.json()["error"]
        private = await client.post(
            f"{api}/admin/lines",
            headers=_key(a),
            json={
                "name": "mine",
                "application_id": app,
                "upstream_kind": "pull",
                "openai_model": "gpt-4o",
                "public": False,
            },
        )
        assert private.status_code == 201, private.text
        opened = await client.put(f"{api}/admin/lines/mine", headers=_key(a), json={"public": True})
        assert opened.status_code == 403
        public = await client.post(
            f"{api}/admin/lines",
            headers=_key(a),
            json={"name": "gpt-5", "application_id": app, "upstream_kind": "pull"},
        )
        assert public.status_code == 201
        v1 = running.base.replace("/api/v1/guest", "/v1")
        models = (await client.get(f"{v1}/models")).json()["data"]
        assert [model["id"] for model in models] == ["main"], "a tenant's line is no model for anonymous callers"
        asked = await client.post(
            f"{v1}/chat/completions", json={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert asked.status_code == 404 and asked.json()["error"]["code"] == "model_not_found"
        blessed = await client.put(f"{api}/admin/lines/gpt-5", headers=ADMIN, json={"openai_model": "tenant-a-bot"})
        assert blessed.status_code == 200
        models = (await client.get(f"{v1}/models")).json()["data"]
        assert sorted(model["id"] for model in models) == ["main", "tenant-a-bot"]
        made = await client.post(f"{api}/admin/lines", headers=ADMIN, json={"name": "guest", "upstream_kind": "pull"})
        assert made.status_code == 201, "the super admin may"


async def test_quotas_bound_what_one_application_holds(tmp_path: Path, upstream: MockUpstream) -> None:
    """Point 9: 400 webhooks on one line; lines and keys without end. Quotas, the super admin's."""
    async with tenants(tmp_path, upstream) as (_, api, client, a, _b):
        app = a["app"]
        shown = (await client.get(f"{api}/admin/applications/{app}", headers=_key(a))).json()
        assert (shown["max_lines"], shown["max_keys"], shown["max_webhooks_per_line"]) == (20, 50, 5)
        raise_own = await client.put(f"{api}/admin/applications/{app}", headers=_key(a), json={"max_lines": 999})
        assert raise_own.status_code == 403
        assert (
            await client.put(
                f"{api}/admin/applications/{app}",
                headers=ADMIN,
                json={"max_lines": 2, "max_keys": 3, "max_webhooks_per_line": 1},
            )
        ).status_code == 200
        hooks = [{"url": f"https://hooks.example/{n}", "events": ["completed"], "secret": "s" * 16} for n in range(2)]
        over = await client.post(
            f"{api}/admin/lines",
            headers=_key(a),
            json={"name": "w", "application_id": app, "upstream_kind": "pull", "webhooks": hooks},
        )
        assert over.status_code == 403 and over.json()["code"] == "quota_exceeded"
        assert "max_webhooks_per_line" in over.json()["error"]
        for name in ("l1", "l2"):
            made = await client.post(
                f"{api}/admin/lines",
                headers=_key(a),
                json={"name": name, "application_id": app, "upstream_kind": "pull"},
            )
            assert made.status_code == 201
        third = await client.post(
            f"{api}/admin/lines", headers=_key(a), json={"name": "l3", "application_id": app, "upstream_kind": "pull"}
        )
        assert third.status_code == 403 and "max_lines" in third.json()["error"]
        for _ in range(2):  # the admin key made by the fixture is the first of three
            assert (
                await client.post(f"{api}/admin/applications/{app}/keys", headers=_key(a), json={})
            ).status_code == 201
        fourth = await client.post(f"{api}/admin/applications/{app}/keys", headers=_key(a), json={})
        assert fourth.status_code == 403 and "max_keys" in fourth.json()["error"]
        too_many = [
            {"url": f"https://hooks.example/{n}", "events": ["completed"], "secret": "s" * 16} for n in range(21)
        ]
        hard = await client.post(
            f"{api}/admin/lines", headers=ADMIN, json={"name": "hooks", "upstream_kind": "pull", "webhooks": too_many}
        )
        assert hard.status_code == 422 and "at most 20" in hard.json()["error"]


def _room(**keys: Any) -> str:
    settings = {"max_active": 5, "batch_size": 10, "process_interval_sec": 0.1, "session_ttl_sec": 30, **keys}
    return '[lines.shop]\nmode = "admission"\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
async def test_one_client_cannot_hold_every_waiting_room_slot(
    tmp_path: Path,
    shared: bool,
    request: pytest.FixtureRequest,
) -> None:
    """Point 8: with max_per_client 2, one address held all 5 sessions: admitted ones did not count."""
    config = tmp_path / "room.toml"
    config.write_text(_room())
    redis: dict[str, Any] = {}
    if shared:
        redis = {
            "redis_url": request.getfixturevalue("redis_url"),
            "redis_prefix": request.getfixturevalue("redis_prefix"),
        }
    async with (
        serve(config=str(config), token_secret=TOKEN_SECRET, max_per_client=2, **redis) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        url = running.base.replace("/guest", "/lines") + "/shop"
        sse = {"Accept": "text/event-stream"}
        for _ in range(2):
            events = await stream_events(client, f"{url}/join", headers=sse)
            assert events[-1].name == "admitted"
        third = await client.post(f"{url}/join")
        assert third.status_code == 429 and third.json()["code"] == "client_limit", third.text
        assert "waiting room" in third.json()["error"]
        done = await client.post(f"{url}/sessions/{events[-1].data['request_id']}/complete")
        assert done.status_code == 200
        again = await stream_events(client, f"{url}/join", headers=sse)
        assert again[-1].name == "admitted", "a finished visit frees the client's place"


async def test_a_waiting_rooms_own_token_secret_signs_its_tokens_only(tmp_path: Path) -> None:
    """Point 14: one GUEST_TOKEN_SECRET signed every tenant's tokens."""
    own = "the-shop-line-has-a-secret-of-its-own-0123"
    config = tmp_path / "rooms.toml"
    config.write_text(_room(token_secret=own) + _room().replace("lines.shop", "lines.desk"))
    async with serve(config=str(config), token_secret=TOKEN_SECRET) as running, httpx.AsyncClient(timeout=10) as client:
        lines = running.base.replace("/guest", "/lines")
        sse = {"Accept": "text/event-stream"}
        shop = (await stream_events(client, f"{lines}/shop/join", headers=sse))[-1].data["token"]
        desk = (await stream_events(client, f"{lines}/desk/join", headers=sse))[-1].data["token"]
        assert jwt.decode(shop, own, algorithms=["HS256"], audience="shop")["line"] == "shop"
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(shop, TOKEN_SECRET, algorithms=["HS256"], audience="shop")
        with pytest.raises(jwt.InvalidAudienceError):  # the process's secret verifies desk's, for desk only
            jwt.decode(desk, TOKEN_SECRET, algorithms=["HS256"], audience="shop")
        for line, token in (("desk", shop), ("shop", desk)):
            verdict = (await client.post(f"{lines}/{line}/tokens/verify", json={"token": token})).json()
            assert verdict["valid"] is False, (line, verdict)
        shown = (await client.get(f"{running.base.removesuffix('/guest')}/admin/lines/shop")).json()
        assert shown["token_secret"] == "***"


async def test_a_page_whose_name_was_rebound_to_loopback_is_no_local_caller(upstream: MockUpstream) -> None:
    """DNS rebinding: evil.example resolving to 127.0.0.1 is same-origin with itself in the browser,
    and its requests come from loopback; without an admin key a local caller is the super admin."""
    async with serve(upstream_url=upstream.url(chunks=1)) as running, httpx.AsyncClient(timeout=10) as client:
        api = running.base.removesuffix("/guest")
        port = running.base.split(":")[2].split("/")[0]
        assert (await client.get(f"{api}/admin/auth/me")).json()["role"] == "super_admin"
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        me = await client.get(f"{api}/admin/auth/me", headers=rebound)
        assert me.status_code == 401
        made = await client.post(f"{api}/admin/applications", json={"name": "x"}, headers=rebound)
        assert made.status_code == 401 and not running.guest.catalog.applications
        assert (await client.get(f"{running.base}/metrics", headers=rebound)).status_code == 403
