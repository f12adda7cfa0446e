"""Whether anything answers at an upstream's address: asked once at start-up, so that a line whose
upstream cannot be reached (a name that does not resolve, a port nobody listens on) is named in
the log and in /health before a guest waits for it (issue 22)."""

from __future__ import annotations

import asyncio
import socket

import httpx

PROBE_TIMEOUT_S = 3.0


async def unreachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a TCP connection to ``url``'s host and port cannot be made, or None if it can."""
    where = httpx.URL(url)
    host, port = where.host, where.port or (443 if where.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except socket.gaierror as exc:
        return f"{host} does not resolve ({exc.strerror or exc})"
    except TimeoutError:
        return f"{host}:{port} did not answer within {timeout_s:g} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    writer.close()
    return None
