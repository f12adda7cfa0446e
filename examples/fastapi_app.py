"""guestqueue mounted in a FastAPI app (pip install fastapi).

Run:  uvicorn examples.fastapi_app:app --port 8000
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from guestqueue import GuestQueue, Settings, WorkflowRequest


async def my_workflow(request: WorkflowRequest) -> AsyncIterator[str]:
    # Call your LLM here; yield text as it arrives.
    yield f"You asked: {request.query}"


guest = GuestQueue(Settings(upstream_interval_s=0, db_path=""), workflow=my_workflow)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Your own start-up work goes around guestqueue's.
    async with guest.lifespan(app):
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/api/v1/guest", guest.app)


@app.get("/")
async def home() -> dict[str, str]:
    return {"app": "mine", "guest_api": "/api/v1/guest"}
