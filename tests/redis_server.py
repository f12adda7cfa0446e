"""A real ``redis-server`` for tests: its own process on a free port, no disk, killed at the end.

Each test gets a fresh key prefix on one server per session (``redis_url`` +
``redis_prefix``), so tests never see each other's keys. Tests that stop or
restart Redis start their own with :func:`run_redis`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Kill it (as a crash would): clients see connection errors until :meth:`start`."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def start(self) -> None:
        """(Re)start on the same port, empty."""
        self.proc = _spawn(self.port)


def _spawn(port: int) -> subprocess.Popen[bytes]:
    if REDIS_SERVER is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "10000",
            "--enable-debug-command",
            "local",
        ],  # DEBUG SLEEP: a Redis that stalls
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.02)


@contextmanager
def run_redis() -> Iterator[RedisServer]:
    port = _free_port()
    server = RedisServer(port, _spawn(port))
    try:
        yield server
    finally:
        server.proc.kill()
        server.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with run_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A fresh key prefix per test: tests sharing the session's server never meet."""
    return f"test-{uuid.uuid4().hex[:10]}"
