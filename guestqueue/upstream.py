"""Upstream adapters: where an admitted question is sent to be answered.

An adapter turns a :class:`WorkflowRequest` into an async stream of
:class:`Chunk`. Four kinds exist (``http``, ``openai``, ``python``, ``demo``);
:func:`make_upstream` picks one from the settings. A Python workflow is any
async generator function taking the request::

    async def workflow(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
        yield "Hello, "
        yield Chunk("world", suggested_questions=["And then?"])

Failures surface as :class:`~guestqueue.errors.UpstreamFailure`; everything a
lower layer raises is mapped at this boundary.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from .config import Settings
from .errors import UpstreamError


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


Workflow = Callable[[WorkflowRequest], AsyncIterator["str | Chunk"]]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (JSON can spell them, UTF-8 cannot) replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


class Upstream(Protocol):
    kind: str

    def stream(self, request: WorkflowRequest) -> AsyncIterator[Chunk]: ...


class PythonUpstream:
    """Runs an async generator function in-process."""

    kind = "python"

    def __init__(self, workflow: Workflow) -> None:
        if not callable(workflow):
            raise TypeError(f"workflow must be an async generator function, got {workflow!r}")
        self.workflow = workflow

    async def stream(self, request: WorkflowRequest) -> AsyncIterator[Chunk]:
        try:
            async for item in self.workflow(request):
                if isinstance(item, Chunk):
                    yield item
                elif isinstance(item, str):
                    yield Chunk(item)
                else:
                    raise UpstreamError(
                        "The assistant sent an answer we could not read.",
                        detail=f"workflow yielded {type(item).__name__}, expected str or Chunk",
                    )
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(
                "The assistant failed while answering. Please try again.",
                detail=f"workflow raised {type(exc).__name__}: {exc}",
            ) from exc


def load_workflow(spec: str) -> Workflow:
    """Import ``module:function`` and check it is an async generator function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"GUEST_UPSTREAM_URL={spec!r}: a python upstream is written module:function")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"GUEST_UPSTREAM_URL={spec!r}: cannot import ({exc})") from exc
    if not inspect.isasyncgenfunction(target):
        raise ValueError(f"GUEST_UPSTREAM_URL={spec!r}: {attr} is not an async generator function")
    workflow: Workflow = target
    return workflow


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one shared HTTP client; its transport is chosen here and nowhere else.

    httpx's API on aiohttp's connection pool (``httpx-aiohttp``): httpcore's
    pool walks every pooled connection on each request and streams through
    anyio, which made the default transport most of guestqueue's CPU per
    relayed stream (docs/benchmarks.md). aiohttp's errors are mapped to
    httpx's by the transport, so the adapters see only httpx exceptions.
    """
    limits = httpx.Limits(
        max_connections=settings.max_concurrent_requests * 2 + 8,
        max_keepalive_connections=settings.max_concurrent_requests + 4,
    )
    transport = AiohttpTransport(limits=limits, retries=0)
    timeout = httpx.Timeout(connect=10.0, read=settings.request_timeout_s, write=10.0, pool=10.0)
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)


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


def make_upstream(settings: Settings, client: httpx.AsyncClient, workflow: Workflow | None = None) -> Upstream:
    """The adapter the settings ask for; a ``workflow`` passed in code wins."""
    from .demo import demo_workflow
    from .upstream_http import HttpUpstream

    if workflow is not None:
        return PythonUpstream(workflow)
    kind = settings.resolved_upstream_kind
    if kind == "demo":
        demo = PythonUpstream(demo_workflow)
        demo.kind = "demo"
        return demo
    if kind == "python":
        return PythonUpstream(load_workflow(settings.upstream_url))
    return HttpUpstream(client, settings.upstream_url, kind=kind, api_key=settings.upstream_api_key,
                        model=settings.upstream_model,
                        allowed_parameters=settings.upstream_allowed_parameter_names)
