"""Helpers for named lines: a server with a GUEST_CONFIG file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ..conftest import Running, serve


@asynccontextmanager
async def serve_lines(tmp_path: Path, toml: str, **overrides: Any) -> AsyncIterator[tuple[Running, str]]:
    """guestqueue with ``toml`` as its GUEST_CONFIG; yields it and the /api/v1/lines URL."""
    path = tmp_path / "guestqueue.toml"
    path.write_text(toml)
    async with serve(config=str(path), **overrides) as running:
        yield running, running.base.removesuffix("/guest") + "/lines"
