"""guestqueue inside your own Starlette app, answering with a Python workflow.

Run:  uvicorn examples.mount_starlette:app --port 8000
Then: curl -N -X POST localhost:8000/api/v1/guest/chat \
           -H 'Content-Type: application/json' -d '{"query": "hello"}'
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from guestqueue import Chunk, GuestQueue, Settings, WorkflowRequest


async def shout(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
    """Your chat workflow: any async generator of text chunks."""
    for word in request.query.upper().split():
        await asyncio.sleep(0.05)
        yield word + " "
    yield Chunk(suggested_questions=["Can you whisper instead?"])


guest = GuestQueue(
    Settings(max_concurrent_requests=2, upstream_interval_s=0, db_path=""),
    workflow=shout,
)


async def home(request: Request) -> JSONResponse:
    return JSONResponse({"app": "mine", "guest_api": "/api/v1/guest"})


app = Starlette(
    routes=[Route("/", home), Mount("/api/v1/guest", app=guest.app)],
    # Starlette does not run a mounted app's lifespan: hand guestqueue's to the outer app.
    lifespan=guest.lifespan,
)
