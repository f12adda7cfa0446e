"""The servers a scenario can start, each as its own process on a free loopback port."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from .procs import PY, Server, free_port

DRIVER_TIMEOUT_S = 900.0


def mock(build: str = "starlette") -> Server:
    port = free_port()
    return Server("mock", [PY, "-m", "bench.mock_upstream", str(port), build], port, "/")


def guestqueue(
    upstream_url: str, *, concurrency: int, queue_size: int, interval_s: float = 0.0, extra: list[str] | None = None
) -> Server:
    port = free_port()
    argv = [
        PY,
        "-m",
        "guestqueue",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--upstream-url",
        upstream_url,
        "--upstream-kind",
        "http",
        "--max-concurrent-requests",
        str(concurrency),
        "--max-queue-size",
        str(queue_size),
        "--upstream-interval-sec",
        str(interval_s),
        "--max-per-client",
        "1000000",
        "--request-timeout-sec",
        "3600",
        "--max-wait-sec",
        "3600",
        "--upstream-retries",
        "0",
        "--db-path",
        "",
        "--cache-size",
        "0",
        "--position-update-sec",
        "1",
        *(extra or []),
    ]
    return Server("guestqueue", argv, port, "/api/v1/guest/health")


def relay(upstream_url: str, *, concurrency: int, transport: str = "httpx") -> Server:
    port = free_port()
    name = "relay" if transport == "httpx" else f"relay-{transport}"
    return Server(
        name, [PY, "-m", "bench.relay", str(port), upstream_url, str(concurrency), transport], port, "/health"
    )


def gradio(upstream_url: str, *, concurrency: int) -> Server:
    port = free_port()
    return Server(
        "gradio",
        [PY, "-m", "bench.gradio_app", str(port), upstream_url, str(concurrency)],
        port,
        "/config",
        env={"GRADIO_ANALYTICS_ENABLED": "False"},
        start_timeout_s=120.0,
    )


def kind_of(server: Server) -> str:
    """The driver's protocol for a server."""
    return "relay" if server.name.startswith("relay") else server.name


def drive(
    job: dict[str, Any], on_phase: Callable[[str], None] | None = None, timeout_s: float = DRIVER_TIMEOUT_S
) -> dict[str, Any]:
    """Run one job in a fresh driver process; ``on_phase`` hears its phase lines as they come."""
    proc = subprocess.Popen(
        [PY, "-m", "bench.driver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    try:
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        for line in proc.stdout:
            message = json.loads(line)
            if "phase" in message and on_phase is not None:
                on_phase(message["phase"])
            if "result" in message:
                result: dict[str, Any] = message["result"]
                return result
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"driver gave no result for {job.get('kind')} {job.get('mode')}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
