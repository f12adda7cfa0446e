"""Gradio's queue in front of the same mock upstream: ``python -m bench.gradio_app PORT UPSTREAM_URL CONCURRENCY``.

A ``gr.Interface`` whose function streams the upstream's answer (an async
generator yielding the text so far, Gradio's streaming idiom) through one
shared ``httpx.AsyncClient``, queued with ``queue(default_concurrency_limit=N,
status_update_rate=1)``.
The load driver speaks Gradio's own queue protocol (``/gradio_api/queue/join``
then the ``/gradio_api/queue/data`` SSE stream), as gradio_client does.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator

import gradio as gr
import httpx


def build(upstream_url: str, concurrency: int) -> gr.Interface:
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(3600.0, connect=10.0), limits=httpx.Limits(max_connections=concurrency + 8)
    )

    async def answer(query: str) -> AsyncIterator[str]:
        text = ""
        async with client.stream("POST", upstream_url, json={"query": query}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    text += json.loads(line[6:])["answer_chunk"]
                    yield text

    demo = gr.Interface(fn=answer, inputs=gr.Textbox(), outputs=gr.Textbox(), api_name="chat")
    # status_update_rate=1: position estimates to every waiting client each second, like
    # guestqueue's GUEST_POSITION_UPDATE_SEC=1 ("auto", the default, only sends when a job ends).
    demo.queue(default_concurrency_limit=concurrency, max_size=None, status_update_rate=1)
    return demo


def main() -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    port, url, concurrency = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    build(url, concurrency).launch(server_name="127.0.0.1", server_port=port, show_error=True, quiet=True)


if __name__ == "__main__":
    main()
