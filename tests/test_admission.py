"""Admission lines (a waiting room) over real uvicorn: tokens, slots held by sessions, FIFO, expiry,
verification, and two instances on one Redis never giving a slot twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import stream_events
from .support.instances import shared_instances
from .support.lines import serve_lines
from .support.waitingroom import ROOM_SECRET, join_room, poll_room, poll_until, room_toml


@asynccontextmanager
async def room(tmp_path: Path, toml: str, **overrides: Any) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    overrides.setdefault("token_secret", ROOM_SECRET)
    async with serve_lines(tmp_path, toml, **overrides) as (_, lines), httpx.AsyncClient(timeout=30) as client:
        yield lines, client


async def _admitted(client: httpx.AsyncClient, urls: list[str], ids: list[str]) -> dict[str, dict[str, Any]]:
    """Which of ``ids`` are admitted now (each polled on one of ``urls`` in turn)."""
    states = await asyncio.gather(*(poll_room(client, urls[n % len(urls)], i) for n, i in enumerate(ids)))
    return {i: s for i, s in zip(ids, states, strict=True) if s["status"] == "admitted"}


async def test_ten_guests_three_slots_each_completion_admits_the_next_in_order(tmp_path: Path) -> None:
    async with room(tmp_path, room_toml()) as (lines, client):
        url = f"{lines}/shop"
        ids = [(await join_room(client, url))["request_id"] for _ in range(10)]
        first = await poll_until(lambda: _admitted(client, [url], ids))
        await asyncio.sleep(0.5)  # a dozen more starts' worth of pacing: still three
        admitted = await _admitted(client, [url], ids)
        assert sorted(admitted) == sorted(ids[:3]) and len(first) <= 3
        waiting = await poll_room(client, url, ids[3])
        assert waiting["status"] == "queued" and waiting["queue_position"] == 1
        assert waiting["poll_after_sec"] >= 1 and "estimated_wait_sec" in waiting
        for done in range(7):  # each completion lets exactly the next guest in
            reply = await client.post(f"{url}/sessions/{ids[done]}/complete")
            assert reply.json() == {"request_id": ids[done], "status": "completed"}
            nxt = ids[done + 3]
            state = await poll_until(lambda n=nxt: _poll_admitted(client, url, n))
            assert state["token"] and state["expires_at"] > time.time()
            now = await _admitted(client, [url], ids)  # (an admitted guest stays so once its session ended)
            assert sorted(now) == sorted(ids[: done + 4]), f"after {done + 1} completions"
        again = await client.delete(f"{url}/sessions/{ids[0]}")
        assert again.status_code == 409 and again.json()["state"] == "completed"
        status = (await client.get(f"{url}/queue/status")).json()
        assert status["sessions"] == {"sessions_active": 3, "admitted": 10, "completed": 7, "expired": 0, "revoked": 0}
        metrics = (await client.get(f"{url}/metrics")).text
        assert 'guestqueue_admitted_total{line="shop"} 10.0' in metrics
        assert 'guestqueue_sessions_active{line="shop"} 3.0' in metrics


async def _poll_admitted(client: httpx.AsyncClient, url: str, request_id: str) -> dict[str, Any] | None:
    state = await poll_room(client, url, request_id)
    return state if state["status"] == "admitted" else None


async def test_a_session_that_is_never_completed_frees_its_slot_at_its_expiry(tmp_path: Path) -> None:
    async with room(tmp_path, room_toml(max_active=1, session_ttl_sec=1)) as (lines, client):
        url = f"{lines}/shop"
        ids = [(await join_room(client, url))["request_id"] for _ in range(2)]
        first = await poll_until(lambda: _poll_admitted(client, url, ids[0]))
        assert (await poll_room(client, url, ids[1]))["status"] == "queued"
        second = await poll_until(lambda: _poll_admitted(client, url, ids[1]), timeout_s=5)
        assert second["expires_at"] >= first["expires_at"]
        status = (await client.get(f"{url}/queue/status")).json()
        assert status["sessions"]["expired"] == 1
        verdict = (await client.post(f"{url}/tokens/verify", json={"token": first["token"]})).json()
        assert verdict["valid"] is False


async def test_tokens_verify_online_and_offline_and_bad_ones_fail(tmp_path: Path) -> None:
    toml = room_toml() + room_toml("other")
    async with room(tmp_path, toml) as (lines, client):
        url = f"{lines}/shop"
        events = await stream_events(client, f"{url}/join", headers={"Accept": "text/event-stream"})
        assert [e.name for e in events][-1] == "admitted"
        token = events[-1].data["token"]
        # What a protected app does offline; the audience is the line (a token of another line is refused).
        claims = jwt.decode(token, ROOM_SECRET, algorithms=["HS256"], audience="shop")
        assert claims["sub"] == events[-1].data["request_id"] and claims["line"] == "shop"
        assert set(claims) == {"sub", "line", "aud", "iat", "exp", "jti"}
        with pytest.raises(jwt.InvalidAudienceError):
            jwt.decode(token, ROOM_SECRET, algorithms=["HS256"], audience="other")

        async def verify(candidate: str) -> dict[str, Any]:
            reply = await client.post(f"{url}/tokens/verify", json={"token": candidate})
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            return body

        assert (await verify(token))["valid"] is True
        forged = jwt.encode({**claims, "exp": claims["exp"] + 3600}, "not-the-secret-" * 3, algorithm="HS256")
        assert (await verify(forged))["valid"] is False
        expired = jwt.encode({**claims, "iat": 1, "exp": int(time.time()) - 60}, ROOM_SECRET, algorithm="HS256")
        outcome = await verify(expired)
        assert outcome == {"valid": False, "reason": "the token has expired"}
        other = (await stream_events(client, f"{lines}/other/join", headers={"Accept": "text/event-stream"}))[-1]
        assert "not 'shop'" in (await verify(other.data["token"]))["reason"]
        assert (await client.post(f"{url}/tokens/verify", json={})).status_code == 422
        # Revoking the jti ends the session: the token stops verifying and the slot is free.
        revoked = await client.delete(f"{url}/tokens/{claims['jti']}")
        assert revoked.json() == {"jti": claims["jti"], "status": "revoked"}
        assert (await verify(token)) == {"valid": False, "reason": "the session is revoked"}
        assert (await client.delete(f"{url}/tokens/{claims['jti']}")).status_code == 404
        status = (await client.get(f"{url}/queue/status")).json()
        assert status["sessions"]["revoked"] == 1 and status["sessions"]["sessions_active"] == 0


async def test_an_es256_key_file_signs_and_its_jwks_checks_tokens_offline(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "token.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    async with room(
        tmp_path, room_toml(redirect_url="https://shop.example/checkout"), token_secret="", token_key_file=str(pem)
    ) as (lines, client):
        url = f"{lines}/shop"
        admitted = (await stream_events(client, f"{url}/join", headers={"Accept": "text/event-stream"}))[-1]
        assert admitted.data["redirect_url"] == "https://shop.example/checkout"
        jwks = (await client.get(f"{url}/tokens/jwks")).json()
        public = jwt.PyJWK(jwks["keys"][0])
        claims = jwt.decode(admitted.data["token"], public.key, algorithms=["ES256"], audience="shop")
        assert claims["line"] == "shop"


async def test_a_websocket_guest_is_admitted_too(tmp_path: Path) -> None:
    async with room(tmp_path, room_toml()) as (lines, _):
        async with websockets.connect(lines.replace("http://", "ws://") + "/shop/ws") as socket:
            await socket.send(json.dumps({"query": "let me in"}))
            messages = [json.loads(message) async for message in socket]
    assert messages[-1]["type"] == "admitted"
    assert (
        jwt.decode(messages[-1]["data"]["token"], ROOM_SECRET, algorithms=["HS256"], audience="shop")["line"] == "shop"
    )


async def test_wrong_use_gets_clear_errors(tmp_path: Path) -> None:
    toml = room_toml() + "[lines.chat]\nupstream_interval_sec = 0\n"
    async with room(tmp_path, toml) as (lines, client):
        not_a_room = await client.post(f"{lines}/chat/join")
        assert not_a_room.status_code == 404 and "not a waiting room" in not_a_room.json()["error"]
        assert (await client.post(f"{lines}/shop/sessions/{'0' * 32}/complete")).status_code == 404
        bad = await client.post(f"{lines}/shop/join", content=b"[1]", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_json"
        assert (await client.get(f"{lines}/shop/join/{'0' * 32}")).status_code == 404


async def test_one_address_at_its_limit_hears_of_places_in_the_waiting_room(tmp_path: Path) -> None:
    """Issue 22 point 10: a shopper was told "You already have 2 questions in progress"."""
    async with room(tmp_path, room_toml(max_active=1, session_ttl_sec=300), max_per_client=2) as (lines, client):
        url = f"{lines}/shop"
        for _ in range(3):  # the first is let in, two wait
            await join_room(client, url)
        refused = await client.post(f"{url}/join")
        assert refused.status_code == 429 and refused.json()["code"] == "client_limit", refused.text
        assert refused.json()["error"].startswith("You already have 2 places in this waiting room."), refused.text


def test_an_admission_line_without_a_token_key_does_not_start(tmp_path: Path) -> None:
    from guestqueue.config import Settings, SettingsError
    from guestqueue.linespec import parse_line

    with pytest.raises(SettingsError, match="GUEST_TOKEN_SECRET"):
        parse_line("shop", {"mode": "admission"}, Settings(), where="t")
    with pytest.raises(SettingsError, match="max_active"):
        parse_line("shop", {"max_active": 3}, Settings(token_secret=ROOM_SECRET), where="t")
    with pytest.raises(SettingsError, match="upstream_url"):
        parse_line(
            "shop", {"mode": "admission", "upstream_url": "http://x"}, Settings(token_secret=ROOM_SECRET), where="t"
        )


@pytest.fixture
def pair(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[str]]:
    """Two instances sharing one Redis, serving one admission line."""
    config = tmp_path / "rooms.toml"
    config.write_text(room_toml(max_active=3, batch_size=20, process_interval_sec=0.2))
    for bases in shared_instances(tmp_path, 2, redis_url, redis_prefix, config=str(config), token_secret=ROOM_SECRET):
        yield [base.removesuffix("/guest") + "/lines/shop" for base in bases]


async def test_two_instances_never_give_a_slot_twice(pair: list[str]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        ids = [(await join_room(client, pair[n % 2]))["request_id"] for n in range(10)]
        seen: set[str] = set()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # two seconds of starts' worth: never more than three
            admitted = await _admitted(client, pair, ids)
            assert len(admitted) <= 3, sorted(admitted)
            seen |= set(admitted)
            await asyncio.sleep(0.05)
        assert seen == set(ids[:3])
        for done in range(7):  # completed on the other instance than the one it joined
            reply = await client.post(f"{pair[(done + 1) % 2]}/sessions/{ids[done]}/complete")
            assert reply.status_code == 200, reply.text
            await poll_until(lambda n=done + 3: _poll_admitted(client, pair[n % 2], ids[n]))
            assert sorted(await _admitted(client, pair, ids)) == sorted(ids[: done + 4])
        tokens = {(await poll_room(client, pair[1], i))["token"] for i in ids}
        assert len(tokens) == 10
        await poll_until(lambda: _counted(client, pair[1], 10))  # the counts are the last sweep's (0.5 s)
        status = (await client.get(f"{pair[1]}/queue/status")).json()
        assert status["sessions"]["sessions_active"] == 3


async def _counted(client: httpx.AsyncClient, url: str, admitted: int) -> bool:
    status = (await client.get(f"{url}/queue/status")).json()
    return bool(status["sessions"]["admitted"] == admitted)
