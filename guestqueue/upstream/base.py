"""What every upstream adapter shares: the request, the chunks, the adapter interface.

An adapter turns a :class:`WorkflowRequest` into an async stream of
:class:`Chunk`. Failures surface as :class:`~guestqueue.errors.UpstreamFailure`;
everything a lower layer raises is mapped at this boundary.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import httpx


@dataclass(frozen=True, slots=True)
class WorkflowRequest:
    request_id: str
    query: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    session_id: str | None = None


@dataclass(slots=True)
class Chunk:
    text: str = ""
    suggested_questions: list[str] | None = None
    tokens: int | None = None  # the answer's tokens, where the upstream reports its usage (a fair line counts them)


Workflow = Callable[[WorkflowRequest], AsyncIterator["str | Chunk"]]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (JSON can spell them, UTF-8 cannot) replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


class Upstream(Protocol):
    kind: str

    def stream(self, request: WorkflowRequest) -> AsyncIterator[Chunk]: ...


def describe_transport_error(exc: httpx.TransportError, url: httpx.URL | str) -> str:
    """What went wrong on the way to the upstream, in plain words, for the logs.

    httpx-aiohttp maps every aiohttp connection error to ``ConnectTimeout`` (a refused
    connection read "ConnectTimeout: ... ssl:default"); the aiohttp error it wraps says
    what really happened.
    """
    cause = exc.__cause__
    where = httpx.URL(url)
    host = f"{where.host}:{where.port or (443 if where.scheme == 'https' else 80)}"
    if isinstance(cause, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed for {where.host} ({cause.os_error.strerror or cause.os_error})"
    if isinstance(cause, aiohttp.ClientConnectorError):
        if isinstance(cause.os_error, ConnectionRefusedError):
            return f"connection refused by {host} (nothing listening there?)"
        if isinstance(cause.os_error, TimeoutError):
            return f"timed out connecting to {host}"
        return f"could not connect to {host} ({cause.os_error.strerror or cause.os_error})"
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return f"{host} closed the connection before answering"
    if isinstance(cause, TimeoutError) or (isinstance(exc, httpx.TimeoutException) and cause is None):
        return f"timed out waiting for {host}"
    return f"{type(cause or exc).__name__} talking to {host}: {cause or exc}"
