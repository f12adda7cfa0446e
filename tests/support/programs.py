"""Other programs the tests start for real: nginx (with our nginx.conf) and node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from guestqueue.web.app import API_PREFIX

from ..conftest import free_port, wait_for_http

NGINX_CONF = Path(__file__).resolve().parents[2] / "nginx.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        pytest.fail("nginx is not installed: apt-get install nginx (.ci/run does it)", pytrace=False)
    return found


def _replace(text: str, old: str, new: str, count: int) -> str:
    # A conf that no longer has the line the test substitutes must fail the test, not
    # silently run with the defaults (port 8080, or a timeout the test did not mean).
    assert text.count(old) == count, f"nginx.conf should contain {old!r} {count}x"
    return text.replace(old, new)


def render_conf(
    prefix: Path,
    *,
    listen_port: int,
    upstream_port: int,
    read_timeout: str | None = None,
    header_timeout: str | None = None,
    more_upstream_ports: tuple[int, ...] = (),
    worker_connections: int = 0,
) -> Path:
    text = NGINX_CONF.read_text()
    if header_timeout is not None:
        text = _replace(text, "client_header_timeout 10s;", f"client_header_timeout {header_timeout};", 1)
    text = _replace(text, "listen 8080;", f"listen 127.0.0.1:{listen_port};", 1)
    if worker_connections:
        text = _replace(text, "worker_connections 1024;", f"worker_connections {worker_connections};", 1)
    server = "server 127.0.0.1:8000 fail_timeout=1s;"
    servers = [server.replace("8000", str(port)) for port in (upstream_port, *more_upstream_ports)]
    text = _replace(text, server, "\n        ".join(servers), 1)
    if read_timeout is not None:
        text = _replace(text, "proxy_read_timeout 700s;", f"proxy_read_timeout {read_timeout};", 2)
    if os.geteuid() == 0:
        # Started as root, nginx's workers would run as "nobody" and could not enter
        # pytest's private temp directory.
        text = "user root;\n" + text
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


@contextmanager
def run_nginx(
    prefix: Path,
    guestqueue_base: str,
    *,
    read_timeout: str | None,
    header_timeout: str | None = None,
    more: tuple[str, ...] = (),
    worker_connections: int = 0,
) -> Iterator[str]:
    """nginx with the repository's conf in front of ``guestqueue_base`` (and the ``more`` instances,
    round-robin); yields the proxied API base URL."""
    upstream_port = urlsplit(guestqueue_base).port
    assert upstream_port is not None
    port = free_port()
    conf = render_conf(
        prefix,
        listen_port=port,
        upstream_port=upstream_port,
        read_timeout=read_timeout,
        header_timeout=header_timeout,
        more_upstream_ports=tuple(urlsplit(b).port or 0 for b in more),
        worker_connections=worker_connections,
    )
    command = [nginx_binary(), "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    checked = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True)
    assert checked.returncode == 0, f"nginx -t failed on the rendered nginx.conf:\n{checked.stderr}"
    proc = subprocess.Popen([*command, "-g", "daemon off;"], stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}{API_PREFIX}"
    try:
        wait_for_http(f"{base}/health")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


JS = Path(__file__).resolve().parents[1] / "js"


async def node(script: str, *args: str) -> dict[str, Any]:
    """Run ``tests/js/SCRIPT`` under Node; it prints one JSON object."""
    if shutil.which("node") is None or not (JS / "node_modules").is_dir():
        pytest.fail("these tests need node and `npm ci --prefix tests/js` (README's test command, .ci/run)")
    proc = await asyncio.create_subprocess_exec(
        "node", str(JS / script), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result
