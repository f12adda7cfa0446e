"""Real parts, really started: the mock upstream runs as its own process, and
guestqueue is served by uvicorn on a free loopback port inside the test's loop
(so tests can also look at its counters and tasks after the fact)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from httpx_sse import aconnect_sse

from guestqueue import GuestQueue, Settings, Workflow
from guestqueue.config import ENV_NAMES
from guestqueue.web.app import API_PREFIX
from guestqueue.web.server import uvicorn_config

pytest_plugins = ["tests.redis_server"]

HERE = Path(__file__).parent


def _cache_bytecode() -> None:
    """Where PYTHONDONTWRITEBYTECODE is set, every Python process the suite starts (xdist workers,
    servers, CLI runs, benchmarks) compiled guestqueue again: a quarter of a second of CPU each,
    half a minute in all. They write it to ``__pycache__`` (git ignores it), as Python does unless
    told otherwise."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


_cache_bytecode()

# Short settings so tests finish in seconds; each test overrides what it exercises.
FAST = {
    "upstream_interval_s": 0.0,
    "position_update_s": 0.2,
    "reconnect_grace_s": 0.0,
    "request_timeout_s": 10.0,
    "max_per_client": 1000,
    "max_per_key": 1000,
    "upstream_retries": 0,
    "db_path": "",
    "cache_size": 0,
    "shutdown_grace_s": 1.0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(url: str, timeout_s: float = 60.0) -> None:
    # A watchdog, not a speed check: a server starting beside the whole suite in four processes
    # on two cores has taken more than 15 s to answer its first request.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up")
        time.sleep(0.05)


@dataclass
class MockUpstream:
    base: str

    def url(self, **params: Any) -> str:
        return f"{self.base}/upstream?{urlencode(params)}"

    def tagged(self, **params: Any) -> tuple[str, str]:
        """A URL with a fresh tag, and the tag (to read this test's calls back)."""
        tag = uuid.uuid4().hex[:12]
        return self.url(tag=tag, **params), tag

    def calls(self, tag: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = httpx.get(f"{self.base}/calls", params={"tag": tag}).json()
        return result

    async def open_gate(self, name: str) -> None:
        """Lets every call sent with ``gate=name`` go on (see tests/mock_upstream.py)."""
        async with httpx.AsyncClient() as client:
            (await client.post(f"{self.base}/gates/{name}")).raise_for_status()

    async def acalls(self, tag: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            result: list[dict[str, Any]] = (await client.get(f"{self.base}/calls", params={"tag": tag})).json()
            return result


@contextmanager
def run_mock_upstream() -> Iterator[MockUpstream]:
    """tests/mock_upstream.py as its own process on a free port (also used by bench/chaos.py)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "mock_upstream.py"), str(port)])
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health")
        yield MockUpstream(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def upstream() -> Iterator[MockUpstream]:
    with run_mock_upstream() as mock:
        yield mock


@dataclass
class Running:
    guest: GuestQueue
    base: str  # http://127.0.0.1:PORT/api/v1/guest
    server: uvicorn.Server | None = None  # for tests that look at connections and transports

    @property
    def service(self) -> Any:
        assert self.guest.service is not None
        return self.guest.service

    @property
    def queue(self) -> Any:
        """The running queue's parts (pool, metrics, log): guestqueue/runtime.py."""
        assert self.guest.queue is not None
        return self.guest.queue


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Any ASGI app on a free loopback port, served by uvicorn in this event loop; yields its base URL."""
    async with serve_uvicorn(app) as (base, _):
        yield base


@asynccontextmanager
async def serve_uvicorn(app: Any, settings: Settings | None = None) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Like :func:`serve_app`, also yielding the uvicorn server, configured as ``guestqueue serve``
    configures it (:func:`guestqueue.web.server.uvicorn_config`) for ``settings``."""
    # The listening socket is bound here and handed over: a port picked first and bound later by
    # uvicorn could be taken meanwhile by another test process ("address already in use"). Made
    # as IPPROTO_TCP, as uvicorn's own: asyncio sets TCP_NODELAY only on such sockets, and without
    # it every answer waits for a delayed ACK (90 ms a request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(
        app,
        settings or Settings(),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)
        sock.close()


@asynccontextmanager
async def serve(workflow: Workflow | None = None, **overrides: Any) -> AsyncIterator[Running]:
    """guestqueue (short settings, plus ``overrides``) on a free port."""
    from guestqueue import create_app

    settings = Settings(**{**FAST, **overrides})
    app = create_app(settings, workflow=workflow)
    async with serve_uvicorn(app, settings) as (base, server):
        yield Running(app.state.guestqueue, base + API_PREFIX, server)


@dataclass
class Received:
    name: str
    id: str
    data: Any


async def stream_events(
    client: httpx.AsyncClient,
    url: str,
    *,
    method: str = "POST",
    stop_after: str | None = None,
    **kwargs: Any,
) -> list[Received]:
    """Every event of one SSE stream (until it ends, or until an event named ``stop_after``)."""
    events: list[Received] = []
    async with aconnect_sse(client, method, url, **kwargs) as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            if not sse.data:
                # httpx-sse dispatches an empty event for a ping comment once an id was seen;
                # the SSE spec (and browsers) dispatch nothing without data.
                continue
            envelope = json.loads(sse.data)
            assert envelope["event"] == sse.event, "envelope and SSE event name must agree"
            events.append(Received(sse.event, sse.id, envelope["data"]))
            if stop_after is not None and sse.event == stop_after:
                break
    return events


async def ask(
    client: httpx.AsyncClient, base: str, query: str = "hello", *, headers: dict[str, str] | None = None, **body: Any
) -> list[Received]:
    return await stream_events(client, f"{base}/chat", json={"query": query, **body}, headers=headers or {})


async def wait_until(predicate: Any, timeout_s: float = 5.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.01)


def assert_drained(running: Running) -> None:
    service = running.service
    assert len(service.waiting) == 0, "queued count must return to 0"
    assert not service.running, "active count must return to 0"
    assert not service.registry.clients, "per-client counts must return to 0"
    assert len(service.registry) == 0, "no live tickets may remain"


def load_example(name: str) -> ModuleType:
    """Import ``examples/NAME.py`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", HERE.parent / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def env_without_guest_vars() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GUEST_")}


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT/api/v1/guest


def start_server_process(log_dir: Path, **env: str) -> ServerProcess:
    """`python -m guestqueue serve` as its own process on a free port, GUEST_* variables from ``env``.

    For signals and restarts, and for tests whose other side blocks (a browser driven
    by selenium) or is another process (nginx) that must reach it as a peer.
    """
    port = free_port()
    full_env = {
        **env_without_guest_vars(),
        "GUEST_PORT": str(port),
        "GUEST_MAX_PER_CLIENT": "1000",
        "GUEST_MAX_PER_KEY": "1000",
        **env,
    }
    log_path = log_dir / f"guestqueue-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "guestqueue", "serve"],
            env=full_env,
            cwd=log_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}{API_PREFIX}"
    try:
        wait_for_http(f"{base}/health")
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"guestqueue did not start:\n{log_path.read_text()}") from None
    return ServerProcess(proc, base)


@contextmanager
def guestqueue_process(log_dir: Path, **overrides: Any) -> Iterator[str]:
    """A server process with the tests' short settings plus ``overrides``; yields its API base URL."""
    settings = {**FAST, "cache_size": 0, **overrides}
    server = start_server_process(log_dir, **{ENV_NAMES[name]: str(value) for name, value in settings.items()})
    try:
        yield server.base
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=15)
