"""`guestqueue serve` and `python -m guestqueue serve` as a new user runs them."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .conftest import env_without_guest_vars, free_port, wait_for_http


@contextmanager
def running(command: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


@pytest.mark.parametrize("entry", ["console-script", "module"])
def test_serve_answers_with_the_demo_upstream(entry: str, tmp_path: Path) -> None:
    port = free_port()
    script = shutil.which("guestqueue", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is installed next to the interpreter"
    command = [script] if entry == "console-script" else [sys.executable, "-m", "guestqueue"]
    env = {**env_without_guest_vars(), "GUEST_UPSTREAM_INTERVAL_SEC": "0"}
    with running([*command, "serve", "--port", str(port)], env, tmp_path) as proc:
        base = f"http://127.0.0.1:{port}/api/v1/guest"
        wait_for_http(f"{base}/health")
        resp = httpx.post(f"{base}/chat/simple", json={"query": "hello"}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert "demo" in resp.json()["answer"]
        assert httpx.get(f"{base}/health").json()["upstream"] == "demo"
    assert proc.returncode == 0


async def test_serve_freezes_long_lived_objects_and_unfreezes_now_and_then() -> None:
    # `guestqueue serve` keeps thousands of idle connections out of the full GC's walk.
    import asyncio
    import gc

    from guestqueue.cli import freeze_survivors

    gc.unfreeze()
    try:
        kept = [[n] for n in range(1000)]  # long-lived containers, like open connections
        freezer = asyncio.create_task(freeze_survivors(every_s=0.02, unfreeze_every=3))
        await asyncio.sleep(0.03)
        assert gc.get_freeze_count() >= len(kept), "first round froze the survivors"
        await asyncio.sleep(0.04)
        counts = []
        for _ in range(6):
            counts.append(gc.get_freeze_count())
            await asyncio.sleep(0.02)
        assert 0 in counts, "every third round unfreezes, so cycles among them can still be reclaimed"
        freezer.cancel()
    finally:
        gc.unfreeze()
