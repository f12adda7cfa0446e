"""Workflows for `guestqueue worker` processes started by tests/test_pull.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from guestqueue.upstream import Chunk, WorkflowRequest


async def echo(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
    """Says who served it (GUEST_TEST_WORKER), then the question, word by word."""
    yield f"[{os.environ.get('GUEST_TEST_WORKER', 'worker')}] "
    for word in request.query.split():
        await asyncio.sleep(0.01)
        yield word + " "
    yield Chunk(suggested_questions=["And then?"])


async def stall(request: WorkflowRequest) -> AsyncIterator[str]:
    """Takes the job and says nothing for a long time (a box that hangs, or is killed, first)."""
    await asyncio.sleep(3600)
    yield "never"


async def slow(request: WorkflowRequest) -> AsyncIterator[str]:
    """Twelve numbered words, a quarter second apart: long enough for Redis to go away mid-answer."""
    for n in range(12):
        await asyncio.sleep(0.25)
        yield f"w{n} "
