"""The admin API: applications, keys and their permissions, lines changed while running."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from guestqueue.tenancy.catalog import PERMISSIONS

from .conftest import MockUpstream, serve, stream_events, wait_until
from .support.admin import ADMIN, admin_server, make_application, make_key, make_line

JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}  # what any web page may send across sites


async def test_a_key_with_write_on_one_line_is_refused_on_another(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=10) as client:
        app = await make_application(client, api, "chatbots")
        for name in ("alpha", "beta"):
            await make_line(
                client, api, name=name, application_id=app, public=False, upstream_url=upstream.url(chunks=1)
            )
        key = await make_key(client, api, app, permissions={"alpha": ["WRITE"]})
        asked = await client.post(f"{api}/lines/alpha/chat/simple", json={"query": "hi"}, headers={"X-API-Key": key})
        assert asked.status_code == 200 and asked.json()["answer"]
        bearer = {"Authorization": f"Bearer {key}"}
        assert (
            await client.post(f"{api}/lines/alpha/chat/simple", json={"query": "hi"}, headers=bearer)
        ).status_code == 200, "the key works as a bearer token too"
        refused = await client.post(f"{api}/lines/beta/chat/simple", json={"query": "hi"}, headers={"X-API-Key": key})
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
        nobody = await client.post(f"{api}/lines/alpha/chat/simple", json={"query": "hi"})
        assert nobody.status_code == 401 and nobody.json()["code"] == "unauthorized"
        assert (await client.get(f"{api}/lines/alpha/queue/history", headers={"X-API-Key": key})).status_code == 403, (
            "WRITE is not READ"
        )
        me = (await client.get(f"{api}/admin/auth/me", headers={"X-API-Key": key})).json()
        assert me["role"] == "member" and me["application"]["id"] == app and "secret_hash" not in me["key"]
        assert (await client.get(f"{api}/admin/auth/permissions/alpha", headers={"X-API-Key": key})).json() == {
            "line": "alpha",
            "permissions": ["WRITE"],
        }
        listed = (await client.get(f"{api}/lines", headers={"X-API-Key": key})).json()["lines"]
        assert [line["name"] for line in listed] == ["alpha", "guest"], "its own line and the public ones"


async def test_a_key_is_shown_once_stored_as_a_hash_and_revoked_at_once(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=10) as client:
        app = await make_application(client, api, "app")
        await make_line(client, api, name="private", application_id=app, public=False)
        made = await client.post(
            f"{api}/admin/applications/{app}/keys", json={"permissions": {"*": ["READ"]}}, headers=ADMIN
        )
        key, key_id = made.json()["key"], made.json()["id"]
        listed = (await client.get(f"{api}/admin/applications/{app}/keys", headers=ADMIN)).text
        secret = key.removeprefix("gq_").split("_", 1)[1]  # the id is hex: the secret may hold "_"
        assert secret not in listed and key_id in listed
        reader = {"X-API-Key": key}
        assert (await client.get(f"{api}/lines/private/queue/status", headers=reader)).status_code == 200
        metrics = (await client.get(f"{api}/lines/private/metrics", headers=reader)).text
        assert 'guestqueue_queue_size{line="private"}' in metrics and 'line="guest"' not in metrics
        assert (await client.get(f"{api}/lines/private/metrics")).status_code == 401
        revoked = await client.delete(f"{api}/admin/applications/{app}/keys/{key_id}", headers=ADMIN)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        after = await client.get(f"{api}/lines/private/queue/status", headers=reader)
        assert after.status_code == 403
    stored = (tmp_path / "guestqueue.db").read_bytes()
    assert secret.encode() not in stored and key_id.encode() in stored


async def test_an_application_admin_manages_its_own_application_only(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=10) as client:
        mine, theirs = await make_application(client, api, "mine"), await make_application(client, api, "theirs")
        admin = {"X-API-Key": await make_key(client, api, mine, role="admin")}
        assert [
            a["id"] for a in (await client.get(f"{api}/admin/applications", headers=admin)).json()["applications"]
        ] == [mine]
        assert (await client.get(f"{api}/admin/applications/{theirs}", headers=admin)).status_code == 404
        assert (
            await client.post(f"{api}/admin/lines", json={"name": "x", "application_id": theirs}, headers=admin)
        ).status_code == 403
        made = await client.post(f"{api}/admin/lines", json={"name": "ours", "application_id": mine}, headers=admin)
        assert made.status_code == 201
        assert (await client.post(f"{api}/admin/applications/{mine}/keys", json={}, headers=admin)).status_code == 201
        assert (await client.post(f"{api}/admin/applications", json={"name": "n"}, headers=admin)).status_code == 403
        assert (
            await client.put(f"{api}/admin/lines/guest", json={"mode": "paused"}, headers=admin)
        ).status_code == 403, "the deployment's own line is the super admin's"
        # Deleting an application stops its keys at once.
        assert (await client.delete(f"{api}/admin/applications/{mine}", headers=ADMIN)).status_code == 200
        assert (await client.get(f"{api}/admin/auth/me", headers=admin)).status_code == 403
        assert (await client.get(f"{api}/lines/ours/queue/status")).status_code == 404, "its lines closed"


async def test_a_line_paused_and_opened_through_the_api_keeps_its_order(
    tmp_path: Path,
    upstream: MockUpstream,
) -> None:
    url, tag = upstream.tagged(chunks=1)
    async with admin_server(tmp_path, upstream) as (running, api), httpx.AsyncClient(timeout=30) as client:
        # One at a time: the upstream sees the calls in the order they started (two at once may arrive swapped).
        await make_line(client, api, name="m", upstream_url=url, max_concurrent_requests=1)
        paused = await client.put(f"{api}/admin/lines/m", json={"mode": "paused"}, headers=ADMIN)
        assert paused.status_code == 200 and paused.json()["mode"] == "paused"
        assert running.guest.lineup is not None
        service = running.guest.lineup.get("m").service
        guests = []
        for n in range(3):
            guests.append(asyncio.create_task(stream_events(client, f"{api}/lines/m/chat", json={"query": f"q{n}"})))
            await wait_until(lambda n=n: service.line.peek().size == n + 1)
        await asyncio.sleep(0.8)
        assert await upstream.acalls(tag) == []
        assert (await client.put(f"{api}/admin/lines/m", json={"mode": "open"}, headers=ADMIN)).status_code == 200
        results = await asyncio.gather(*guests)
        assert [call["body"]["query"] for call in await upstream.acalls(tag)] == ["q0", "q1", "q2"]
        assert all(events[-1].name == "workflow_complete" for events in results)


async def test_lines_and_keys_outlive_a_restart(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=10) as client:
        app = await make_application(client, api, "kept")
        await make_line(client, api, name="kept", application_id=app, public=False, max_queue_size=7)
        key = await make_key(client, api, app, permissions={"kept": ["WRITE", "READ"]})
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=10) as client:
        status = await client.get(f"{api}/lines/kept/queue/status", headers={"X-API-Key": key})
        assert status.status_code == 200 and status.json()["max_queue_size"] == 7


async def test_bad_admin_requests_get_clear_errors(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=10) as client:
        cases = [
            (client.post(f"{api}/admin/applications", json={"name": "x"}), 401, "unauthorized"),
            (client.post(f"{api}/admin/applications", json={"name": ""}, headers=ADMIN), 422, "invalid_field"),
            (client.post(f"{api}/admin/applications", content=b"{", headers={**ADMIN, **JSON}), 400, "invalid_json"),
            (
                client.post(f"{api}/admin/applications", content=b'{"name": "x"}', headers={**ADMIN, **TEXT}),
                415,
                "unsupported_media_type",
            ),
            (client.post(f"{api}/admin/lines", json={"name": "Bad Name"}, headers=ADMIN), 422, "invalid_field"),
            (client.post(f"{api}/admin/lines", json={"name": "guest"}, headers=ADMIN), 409, "conflict"),
            (
                client.post(f"{api}/admin/lines", json={"name": "z", "mode": "shut"}, headers=ADMIN),
                422,
                "invalid_field",
            ),
            (client.put(f"{api}/admin/lines/nope", json={}, headers=ADMIN), 404, "not_found"),
            (client.get(f"{api}/admin/auth/me", headers={"X-API-Key": "gq_nope_nope"}), 403, "forbidden"),
        ]
        for call, status, code in cases:
            answer = await call
            assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
        schema = (await client.get(f"{api}/admin/openapi.json")).json()
        assert "/applications/{app_id}/keys" in schema["paths"] and "post" in schema["paths"]["/lines"]
        # Issue 22 point 15: a generated client must find the paths and send what the server takes.
        assert schema["servers"] == [{"url": "/api/v1/admin"}]
        enums = [node["enum"] for node in _nodes(schema) if "enum" in node and "READ" in node["enum"]]
        assert enums and all(enum == list(PERMISSIONS) for enum in enums), enums


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    """Every object in a JSON document."""
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from _nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


async def test_on_a_private_line_cancelling_needs_delete_or_write(tmp_path: Path, upstream: MockUpstream) -> None:
    async with (
        admin_server(tmp_path, upstream, upstream_url=upstream.url(chunks=1, first=5.0), reconnect_grace_s=30.0) as (
            _,
            api,
        ),
        httpx.AsyncClient(timeout=10) as client,
    ):
        app = await make_application(client, api, "app")
        await make_line(client, api, name="private", application_id=app, public=False)
        writer = {"X-API-Key": await make_key(client, api, app, permissions={"private": ["WRITE"]})}
        deleter = {"X-API-Key": await make_key(client, api, app, permissions={"private": ["DELETE"]})}
        reader = {"X-API-Key": await make_key(client, api, app, permissions={"private": ["READ"]})}
        ids = []
        for _ in range(2):
            async with client.stream(
                "POST", f"{api}/lines/private/chat", json={"query": "slow"}, headers=writer
            ) as response:
                ids.append(response.headers["X-Request-ID"])
        assert (await client.delete(f"{api}/lines/private/chat/{ids[0]}")).status_code == 401
        assert (await client.delete(f"{api}/lines/private/chat/{ids[0]}", headers=reader)).status_code == 403
        assert (await client.delete(f"{api}/lines/private/chat/{ids[0]}", headers=deleter)).status_code == 200
        assert (await client.delete(f"{api}/lines/private/chat/{ids[1]}", headers=writer)).status_code == 200


async def test_a_private_lines_websocket_needs_write(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=10) as client:
        app = await make_application(client, api, "app")
        await make_line(client, api, name="private", application_id=app, public=False)
        writer = await make_key(client, api, app, permissions={"private": ["WRITE"]})
        url = api.replace("http://", "ws://") + "/lines/private/ws"
        with pytest.raises(websockets.InvalidStatus) as refused:  # closed before accepting: the handshake's 403
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 403
        async with websockets.connect(url, additional_headers={"X-API-Key": writer}) as ws:
            await ws.send(json.dumps({"query": "hi"}))
            names: list[str] = []
            while not names or names[-1] not in ("result", "error", "queue_full"):
                names.append(json.loads(await ws.recv())["type"])
        assert names[-1] == "result"


async def test_lines_made_at_the_same_moment_all_open(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (running, api), httpx.AsyncClient(timeout=10) as client:
        made = await asyncio.gather(
            *(client.post(f"{api}/admin/lines", json={"name": f"l{n}"}, headers=ADMIN) for n in range(6))
        )
        assert [answer.status_code for answer in made] == [201] * 6
        listed = (await client.get(f"{api}/lines")).json()["lines"]
        assert sorted(line["name"] for line in listed) == ["guest", *(f"l{n}" for n in range(6))]
        assert running.guest.lineup is not None and len(running.guest.lineup.queues) == 7


async def test_a_purge_sends_the_waiting_guests_away_and_lets_the_running_call_finish(
    tmp_path: Path,
    upstream: MockUpstream,
) -> None:
    async with (
        admin_server(tmp_path, upstream, upstream_url=upstream.url(chunks=1, first=1.0)) as (running, api),
        httpx.AsyncClient(timeout=20) as client,
    ):
        app = await make_application(client, api, "p")
        await make_line(client, api, name="p", application_id=app, max_concurrent_requests=1)
        manager = {"X-API-Key": await make_key(client, api, app, permissions={"p": ["MANAGE"]})}
        reader = {"X-API-Key": await make_key(client, api, app, permissions={"p": ["READ"]})}
        assert running.guest.lineup is not None
        line = running.guest.lineup.get("p").service.line
        guests = [
            asyncio.create_task(stream_events(client, f"{api}/lines/p/chat", json={"query": f"q{n}"})) for n in range(3)
        ]
        await wait_until(lambda: line.peek().size == 2 and line.peek().active == 1)
        assert (await client.post(f"{api}/admin/lines/p/purge", headers=reader)).status_code == 403
        purged = await client.post(f"{api}/admin/lines/p/purge", headers=manager)
        assert purged.status_code == 200 and purged.json()["purged_at"] > 0
        endings = [(events[-1].name, events[-1].data.get("code")) for events in await asyncio.gather(*guests)]
    assert sorted(endings, key=str) == sorted(
        [("workflow_complete", None), ("error", "purged"), ("error", "purged")], key=str
    )


async def test_without_an_admin_key_a_remote_guest_of_a_private_line_is_asked_for_a_key(
    tmp_path: Path,
    upstream: MockUpstream,
) -> None:
    async with (
        serve(upstream_url=upstream.url(chunks=1), db_path=str(tmp_path / "g.db")) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        api = running.base.removesuffix("/guest")
        # No GUEST_ADMIN_API_KEY: a local caller is the super admin (as for the operator's views).
        assert (await client.post(f"{api}/admin/lines", json={"name": "private", "public": False})).status_code == 201
        remote = {"X-Forwarded-For": "203.0.113.9"}  # from a proxy that is not trusted: not local
        asked = await client.post(f"{api}/lines/private/chat/simple", json={"query": "hi"}, headers=remote)
        assert asked.status_code == 401 and asked.json()["code"] == "unauthorized"
        assert "API key" in asked.json()["error"]
