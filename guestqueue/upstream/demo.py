"""The built-in demo upstream: a canned, plausible answer streamed word by word.

Used when no upstream is configured, so a new user sees the whole lifecycle
(place in line, processing, streamed answer) without any other service.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

from .base import Chunk, WorkflowRequest

THINKING_S = 0.4
WORD_DELAY_S = (0.03, 0.08)

ANSWERS = (
    "Thanks for your question! This answer comes from guestqueue's built-in demo upstream. "
    "Your request waited in a fair first-come-first-served line, a worker picked it up when "
    "a slot and the pacing limiter allowed, and the answer is now streaming back to you word by word. "
    "Point GUEST_UPSTREAM_URL at your own chat workflow to get real answers.",
    "Good question. In a real deployment guestqueue would forward it to your language model or chat "
    "workflow, at most a few at a time and spaced out so the backend is never overwhelmed. "
    "While you waited, you heard your place in line and an estimate of the wait. "
    "This reply is canned, but the queueing, pacing and streaming you just saw are real.",
    "Here is a demo answer. guestqueue keeps slow or rate-limited backends healthy by letting guests "
    "wait in line instead of failing: everyone hears where they stand, nobody is skipped, and every "
    "request ends with exactly one final event. Configure an upstream to replace this text.",
)
SUGGESTIONS = (
    "How does the waiting line work?",
    "What happens if I close the page?",
    "How do I connect my own model?",
)


async def demo_workflow(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
    digest = hashlib.sha256(request.query.strip().lower().encode()).digest()
    answer = ANSWERS[digest[0] % len(ANSWERS)]
    rng = random.Random(digest)
    await asyncio.sleep(THINKING_S)
    words = answer.split(" ")
    for index, word in enumerate(words):
        yield word if index == len(words) - 1 else word + " "
        await asyncio.sleep(rng.uniform(*WORD_DELAY_S))
    yield Chunk("", suggested_questions=list(SUGGESTIONS))
