"""Helpers for the WebSocket door: its URL and its messages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


async def messages(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every message until the server closes the connection (with any close code)."""
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        try:
            async for message in ws:
                received.append(json.loads(message))
        except websockets.ConnectionClosedError:
            pass  # closed with a code other than 1000/1001: the test looks at ws.close_code
    return received
