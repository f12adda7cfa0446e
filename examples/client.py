"""A guest in Python: ask a question, print the place in line, then the answer as it streams.

Run (with `guestqueue serve` running):

    python examples/client.py "How does the line work?"
    python examples/client.py --url http://my-host:8080/api/v1/guest "Hello?"   # through nginx

Uses httpx and httpx-sse (both installed with guestqueue). A dropped stream is
resumed with GET /chat/{id}/events and Last-Event-ID, like the browser client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

import httpx
from httpx_sse import aconnect_sse

DEFAULT_URL = "http://127.0.0.1:8000/api/v1/guest"


class Rejected(Exception):
    """The question was turned away (line full, too many questions, bad input)."""


async def ask(query: str, *, base_url: str = DEFAULT_URL, out: TextIO = sys.stdout, reconnects: int = 3) -> str:
    """Ask ``query``; write progress and the answer to ``out``; return the answer."""
    timeout = httpx.Timeout(10.0, read=None)  # a wait in line may be long; the server pings quiet streams
    async with httpx.AsyncClient(timeout=timeout) as client:
        method, url, kwargs = "POST", f"{base_url}/chat", {"json": {"query": query}}
        request_id, last_event_id = "", ""
        for _attempt in range(reconnects + 1):
            try:
                async with aconnect_sse(client, method, url, **kwargs) as source:
                    if source.response.status_code != 200:
                        body = json.loads(await source.response.aread())
                        raise Rejected(f"{body['error']} ({body['code']}, HTTP {source.response.status_code})")
                    request_id = source.response.headers["X-Request-ID"]
                    async for sse in source.aiter_sse():
                        last_event_id = sse.id
                        ending = _show(json.loads(sse.data), out)
                        if ending is not None:
                            return ending
            except httpx.TransportError as exc:
                print(f"\n[connection lost: {exc!r}; resuming]", file=out)
            if not request_id:
                break
            # Resume where we were; the server keeps our place for GUEST_RECONNECT_GRACE_SEC.
            method, url = "GET", f"{base_url}/chat/{request_id}/events"
            kwargs = {"headers": {"Last-Event-ID": last_event_id}}
            await asyncio.sleep(0.5)
    raise ConnectionError("the stream ended without an answer")


def _show(envelope: dict[str, Any], out: TextIO) -> str | None:
    """Print one event; the answer once the request has ended."""
    name, data = envelope["event"], envelope["data"]
    if name == "queued":
        print(
            f"[you are number {data['queue_position']} in line, about {data['estimated_wait_sec']:.0f} s]",
            file=out,
            flush=True,
        )
    elif name == "processing":
        print("[writing your answer]", file=out, flush=True)
    elif name == "answer_chunk":
        print(data, end="", file=out, flush=True)
    elif name == "workflow_complete":
        print(file=out)
        answer: str = data["answer"]
        return answer
    elif name == "timeout":
        print(f"\n[{data['fallback']}]", file=out)
        return ""
    elif name == "error":
        print(f"\n[{data['error']} ({data['code']})]", file=out)
        return ""
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the API base URL (default {DEFAULT_URL})")
    args = parser.parse_args()
    try:
        asyncio.run(ask(args.query, base_url=args.url))
    except Rejected as exc:
        print(f"turned away: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
