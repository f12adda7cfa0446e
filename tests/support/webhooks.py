"""Helpers for webhooks: a receiver that records deliveries and checks their signatures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..conftest import serve_app

HOOK_SECRET = "a-webhook-secret-of-some-length"


@dataclass
class Receiver:
    """Answers 500 to the first ``fail`` posts, then 200; ``down`` makes it answer 503."""

    fail: int = 0
    down: bool = False
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    processed: set[str] = field(default_factory=set)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self.seen.append((dict(request.headers), body))
        if self.down or len(self.seen) <= self.fail:
            return JSONResponse({"error": "not now"}, status_code=503 if self.down else 500)
        self.processed.add(request.headers["x-guestqueue-delivery"])  # idempotent by delivery id
        return JSONResponse({"ok": True})


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[str]:
    async with serve_app(Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])) as base:
        yield f"{base}/hook"
