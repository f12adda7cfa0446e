"""Server processes: start on loopback, wait until they answer, read CPU and RSS from /proc, stop.

CPU and memory come from the kernel's own accounting (``/proc/PID/stat`` and
``/proc/PID/status``), not from the process's idea of itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: fields[11] = utime, fields[12] = stime (man 5 proc, 14 and 15).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Usage:
    """CPU used between two readings, as seconds and as a share of one core."""

    cpu_s: float
    wall_s: float

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Server:
    """One server process; use as a context manager so it is always stopped."""

    name: str
    argv: list[str]
    port: int
    health_path: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 60.0
    proc: subprocess.Popen[bytes] | None = None
    _mark: tuple[float, float] = (0.0, 0.0)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def start(self) -> Server:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.proc = subprocess.Popen(
            self.argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                if httpx.get(self.base + self.health_path, timeout=2.0).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not answer within {self.start_timeout_s:g} s")
            time.sleep(0.1)
        # Nobody reads stderr from here on: a chatty server must not block on a full pipe.
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # Each server leads its own process group (start_new_session), so this
        # reaches its children and nothing else.
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def mark(self) -> None:
        """Start a CPU measurement window."""
        self._mark = (cpu_seconds(self.pid), time.monotonic())

    def usage(self) -> Usage:
        """CPU since :meth:`mark`."""
        cpu0, t0 = self._mark
        return Usage(cpu_seconds(self.pid) - cpu0, time.monotonic() - t0)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


PY = sys.executable
