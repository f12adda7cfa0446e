"""What the numbers were measured on: they mean little without it."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("starlette", "uvicorn", "httpx", "httpx-aiohttp", "aiohttp", "gradio", "uvloop")


def describe() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "git": rev,
        "packages": versions,
    }


def one_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['nproc']} x {machine['cpu']}, {machine['mem_gib']} GiB, Python {machine['python']}, "
        f"load {machine['loadavg_at_start'][0]:.2f} at start, git {machine['git']}"
    )
