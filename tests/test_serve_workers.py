"""`guestqueue serve --workers N`: N server processes on one port, one line through Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from guestqueue.web.app import API_PREFIX

from .conftest import MockUpstream, env_without_guest_vars, free_port, wait_for_http


def test_several_workers_without_redis_stop_at_once_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "guestqueue", "serve", "--workers", "2"],
        env=env_without_guest_vars(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "GUEST_REDIS_URL" in result.stderr, result.stderr


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def test_workers_share_the_port_and_the_line_and_stop_together(
    tmp_path: Path, redis_url: str, redis_prefix: str, upstream: MockUpstream
) -> None:
    port = free_port()
    env = {
        **env_without_guest_vars(),
        "GUEST_PORT": str(port),
        "GUEST_REDIS_URL": redis_url,
        "GUEST_REDIS_PREFIX": redis_prefix,
        "GUEST_UPSTREAM_URL": upstream.url(),
        "GUEST_UPSTREAM_INTERVAL_SEC": "0",
        "GUEST_DB_PATH": "",
    }
    log = (tmp_path / "serve.log").open("wb")
    parent = subprocess.Popen(
        [sys.executable, "-m", "guestqueue", "serve", "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}{API_PREFIX}"
    try:
        wait_for_http(f"{base}/health")
        children = _children(parent.pid)
        assert len(children) == 2, children
        with httpx.Client(timeout=30) as client:
            for _ in range(50):
                status = client.get(f"{base}/queue/status").json()
                if len(status.get("instances", [])) == 2:
                    break
            assert {i["pid"] for i in status["instances"]} == children, "both workers on the one line"
            answers = [client.post(f"{base}/chat/simple", json={"query": f"q{n}"}) for n in range(6)]
            assert [a.status_code for a in answers] == [200] * 6
        parent.terminate()
        assert parent.wait(30) == 0
        assert not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in children)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        log.close()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"


def test_a_worker_that_dies_is_started_again(
    tmp_path: Path, redis_url: str, redis_prefix: str, upstream: MockUpstream
) -> None:
    port = free_port()
    env = {
        **env_without_guest_vars(),
        "GUEST_PORT": str(port),
        "GUEST_REDIS_URL": redis_url,
        "GUEST_REDIS_PREFIX": redis_prefix,
        "GUEST_UPSTREAM_URL": upstream.url(),
        "GUEST_DB_PATH": "",
    }
    parent = subprocess.Popen(
        [sys.executable, "-m", "guestqueue", "serve", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}{API_PREFIX}"
    try:
        wait_for_http(f"{base}/health")
        first = _children(parent.pid)
        victim = min(first)
        os.kill(victim, 9)
        for _ in range(100):
            now = _children(parent.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.1)
        assert len(now) == 2 and victim not in now, now
        assert httpx.post(f"{base}/chat/simple", json={"query": "still here"}, timeout=30).status_code == 200
    finally:
        parent.terminate()
        parent.wait(30)


def test_workers_leave_with_their_parent(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    port = free_port()
    env = {
        **env_without_guest_vars(),
        "GUEST_PORT": str(port),
        "GUEST_REDIS_URL": redis_url,
        "GUEST_REDIS_PREFIX": redis_prefix,
        "GUEST_DB_PATH": "",
    }
    parent = subprocess.Popen(
        [sys.executable, "-m", "guestqueue", "serve", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}{API_PREFIX}/health")
        children = _children(parent.pid)
        parent.kill()  # no chance to pass anything on
        parent.wait(10)
        for _ in range(100):
            if not any(_state(pid) not in ("gone",) and "zombie" not in _state(pid) for pid in children):
                break
            time.sleep(0.1)
        assert all(_state(pid) == "gone" or "zombie" in _state(pid) for pid in children), children
    finally:
        for pid in _children(parent.pid) if parent.poll() is None else []:
            os.kill(pid, 9)


def _serve_two(port: int, redis_url: str, redis_prefix: str) -> subprocess.Popen[bytes]:
    env = {
        **env_without_guest_vars(),
        "GUEST_PORT": str(port),
        "GUEST_REDIS_URL": redis_url,
        "GUEST_REDIS_PREFIX": redis_prefix,
        "GUEST_DB_PATH": "",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "guestqueue", "serve", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stops_cleanly(parent: subprocess.Popen[bytes], children: set[int]) -> None:
    try:
        assert parent.wait(30) == 0
    finally:
        if parent.poll() is None:
            parent.kill()  # its workers follow (they get SIGTERM when it dies)
            parent.wait(10)
    for _ in range(100):
        if all(_state(pid) == "gone" or "zombie" in _state(pid) for pid in children):
            break
        time.sleep(0.1)
    assert all(_state(pid) == "gone" or "zombie" in _state(pid) for pid in children), children


def test_a_stop_while_a_dead_worker_waits_to_be_started_again_stops_everything(
    redis_url: str, redis_prefix: str
) -> None:
    # The supervisor used to start the dead worker again after its pause even though it had been told
    # to stop: that new worker never heard of the stop, and the parent waited for it forever.
    port = free_port()
    parent = _serve_two(port, redis_url, redis_prefix)
    wait_for_http(f"http://127.0.0.1:{port}{API_PREFIX}/health")
    children = _children(parent.pid)
    os.kill(min(children), 9)
    time.sleep(0.2)  # within the restart pause
    parent.terminate()
    _stops_cleanly(parent, children)


def test_a_stop_while_the_workers_start_stops_everything(redis_url: str, redis_prefix: str) -> None:
    # A SIGTERM that reached a worker before its server listened for signals used to be lost (or run
    # the parent's handler, copied by fork): the worker then served on and the parent never exited.
    parent = _serve_two(free_port(), redis_url, redis_prefix)
    children: set[int] = set()
    deadline = time.monotonic() + 30
    while len(children) < 2 and time.monotonic() < deadline:
        children = _children(parent.pid)
    assert len(children) == 2
    parent.terminate()
    _stops_cleanly(parent, children)
