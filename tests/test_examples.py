"""The examples in examples/: the Python client runs against a real server; the commands in
the systemd unit, the Dockerfile and the OpenAI setup guide must parse as real settings.
(The Dockerfile itself cannot be built here: there is no Docker engine on the test machines.)"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from guestqueue.cli import build_parser, load_settings
from guestqueue.config import Settings
from guestqueue.web.app import API_PREFIX

from .conftest import MockUpstream, env_without_guest_vars, free_port, load_example, serve, wait_for_http
from .support.programs import nginx_binary

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


def settings_for(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What ``guestqueue`` would run with, given these arguments and GUEST_* variables."""
    for key in [key for key in os.environ if key.startswith("GUEST_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert argv[0].endswith("guestqueue"), argv
    return load_settings(build_parser().parse_args(argv[1:]))


async def test_python_client_prints_place_and_answer(upstream: MockUpstream) -> None:
    client = load_example("client")
    out = io.StringIO()
    async with serve(upstream_url=upstream.url(chunks=3, delay=0.05)) as running:
        answer = await client.ask("hello", base_url=running.base, out=out)
    assert answer == "chunk0 chunk1 chunk2 "
    printed = out.getvalue()
    assert printed.startswith("[you are number 1 in line, about ")
    assert "[writing your answer]\nchunk0 chunk1 chunk2 \n" in printed


async def test_python_client_reports_a_rejection() -> None:
    client = load_example("client")
    async with serve() as running:
        with pytest.raises(client.Rejected, match="invalid_field, HTTP 422"):
            await client.ask("   ", base_url=running.base, out=io.StringIO())


def test_systemd_unit_runs_a_valid_command(monkeypatch: pytest.MonkeyPatch) -> None:
    unit = (EXAMPLES / "guestqueue@.service").read_text().replace("%i", "8001")
    [exec_start] = re.findall(r"^ExecStart=(.+)$", unit, re.M)
    env = dict(line.split("=", 1) for line in re.findall(r"^Environment=(.+)$", unit, re.M))
    settings = settings_for(shlex.split(exec_start), env, monkeypatch)
    assert (settings.host, settings.port) == ("127.0.0.1", 8001)
    assert settings.trusted_proxies == "127.0.0.1"
    assert settings.db_path == "/var/lib/guestqueue/requests-8001.db"
    assert "StateDirectory=guestqueue" in unit, "the database directory must exist and be writable"


def test_dockerfile_runs_a_valid_command(monkeypatch: pytest.MonkeyPatch) -> None:
    dockerfile = (EXAMPLES / "Dockerfile").read_text()
    joined = dockerfile.replace("\\\n", " ")
    [cmd] = re.findall(r"^CMD (.+)$", joined, re.M)
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", joined, re.M):
        for pair in shlex.split(line):
            key, value = pair.split("=", 1)
            env[key] = value
    settings = settings_for(json.loads(cmd), {k: v for k, v in env.items() if k.startswith("GUEST_")}, monkeypatch)
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert f"http://127.0.0.1:{settings.port}{API_PREFIX}/health" in dockerfile
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which is not in the repository"


def test_openai_guide_commands_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    guide = (EXAMPLES / "openai_upstream.md").read_text().replace("\\\n", " ")
    commands = [line for line in guide.splitlines() if "guestqueue serve" in line and not line.startswith("`")]
    assert len(commands) == 4
    for line in commands:
        words = shlex.split(line)
        env = {}
        while "=" in words[0]:
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        settings = settings_for(words, env, monkeypatch)
        assert settings.resolved_upstream_kind == "openai", line
        assert settings.upstream_model and settings.upstream_url.startswith(("http://", "https://")), line


def test_the_compose_example_runs_three_instances_on_one_redis_behind_nginx(tmp_path: Path) -> None:
    compose = yaml.safe_load((EXAMPLES / "docker-compose.yml").read_text())
    services = compose["services"]
    instances = [name for name in services if name.startswith("guestqueue-")]
    assert {"redis", "nginx"} <= set(services) and len(instances) == 3
    for name in instances:
        environment = services[name]["environment"]
        assert environment["GUEST_REDIS_URL"].startswith("redis://redis:"), name
        Settings.from_env({k: str(v) for k, v in environment.items()})  # every value is a valid setting
    conf = (EXAMPLES / "nginx-compose.conf").read_text()
    for name in instances:
        # A short fail_timeout: a rolling restart must not leave nginx without a server (nginx.conf).
        assert f"server {name}:8000 fail_timeout=1s;" in conf, f"nginx sends guests to {name}"
    block = conf.split("upstream guestqueue {")[1].split("}")[0]
    directives = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert not any(d.startswith(("ip_hash", "hash ")) for d in directives), "plain round-robin"
    # nginx resolves upstream names when it starts: check the rest with addresses that exist here.
    local = conf
    for n, name in enumerate(instances):
        local = local.replace(f"server {name}:8000 ", f"server 127.0.0.1:{8001 + n} ")
    (tmp_path / "nginx.conf").write_text(local)
    checked = subprocess.run(
        [nginx_binary(), "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr


async def test_the_checkout_example_lets_in_the_admitted_and_frees_the_slot_when_they_pay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "change-me-to-32-or-more-random-characters"
    async with serve(config=str(EXAMPLES / "waiting_room.toml"), token_secret=secret) as running:
        queue = running.base.removesuffix("/api/v1/guest")
        monkeypatch.setenv("GUEST_TOKEN_SECRET", secret)
        monkeypatch.setenv("GUESTQUEUE_URL", queue)
        checkout = load_example("checkout")
        shop = httpx.AsyncClient(transport=httpx.ASGITransport(app=checkout.app), base_url="http://shop")
        async with shop, httpx.AsyncClient(timeout=10) as client:
            page = (await shop.get("/")).text
            assert f"{queue}/api/v1/lines/shop" in page, "the waiting page joins our line"
            joined = (await client.post(f"{queue}/api/v1/lines/shop/join")).json()
            state = joined
            for _ in range(100):
                if state["status"] == "admitted":
                    break
                await asyncio.sleep(0.05)
                state = (await client.get(f"{queue}/api/v1/lines/shop/join/{joined['request_id']}")).json()
            assert state["redirect_url"] == "http://127.0.0.1:9000/checkout"
            assert (await shop.get("/checkout", params={"token": "forged"})).status_code == 403
            assert "Checkout" in (await shop.get("/checkout", params={"token": state["token"]})).text
            paid = await shop.post("/pay", data={"token": state["token"]})
            assert "Thank you" in paid.text
            again = await client.post(f"{queue}/api/v1/lines/shop/sessions/{joined['request_id']}/complete")
            assert again.status_code == 409 and again.json()["state"] == "completed"


def test_the_checkout_example_takes_its_addresses_from_flags(tmp_path: Path) -> None:
    """Issue 22 point 13: ports 8000 and 9000 were fixed in the example, GUESTQUEUE_URL only in its source."""
    port, queue = free_port(), "http://127.0.0.1:18123"
    env = {**env_without_guest_vars(), "GUEST_TOKEN_SECRET": "s" * 32}
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "checkout.py"), "--port", str(port), "--queue", queue, "--line", "tickets"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/")
        page = httpx.get(f"http://127.0.0.1:{port}/").text
        assert f'const line = "{queue}/api/v1/lines/tickets";' in page, page
    finally:
        proc.terminate()
        proc.wait(10)
