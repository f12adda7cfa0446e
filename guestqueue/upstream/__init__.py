"""Upstream adapters: where an admitted question is sent to be answered.

Four kinds exist (``http`` and ``openai`` in http.py, ``python`` in python.py,
``demo``); :func:`make_upstream` picks one from the settings, and
:func:`make_http_client` makes the one HTTP client they share.
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport

from ..config import Settings
from ..outbound import OUTBOUND_HEADER, GuardedTransport, OutboundPolicy
from ..pull.board import MemoryJobBoard
from ..pull.upstream import PullUpstream
from .base import Chunk, Upstream, Workflow, WorkflowRequest, describe_transport_error, valid_text
from .demo import demo_workflow
from .http import HttpUpstream
from .python import PythonUpstream, load_workflow

__all__ = [
    "Chunk",
    "HttpUpstream",
    "PythonUpstream",
    "Upstream",
    "Workflow",
    "WorkflowRequest",
    "describe_transport_error",
    "load_workflow",
    "make_http_client",
    "make_upstream",
    "valid_text",
]


def make_http_client(
    settings: Settings,
    policy: OutboundPolicy | None = None,
    *,
    connections: int | None = None,
) -> httpx.AsyncClient:
    """The shared HTTP client; its transport is chosen here and nowhere else. With ``policy``, the
    client for the URLs tenants set (outbound.py): it connects only where the policy allows.

    httpx's API on aiohttp's connection pool (``httpx-aiohttp``): httpcore's
    pool walks every pooled connection on each request and streams through
    anyio, which made the default transport most of guestqueue's CPU per
    relayed stream (docs/benchmarks.md). aiohttp's errors are mapped to
    httpx's by the transport, so the adapters see only httpx exceptions.
    """
    connections = connections or settings.max_concurrent_requests * 2 + 8
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections // 2 + 1)
    transport = (
        AiohttpTransport(limits=limits, retries=0)
        if policy is None
        else GuardedTransport(policy, limits=limits, retries=0)
    )
    timeout = httpx.Timeout(connect=10.0, read=settings.request_timeout_s, write=10.0, pool=10.0)
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=False, headers={OUTBOUND_HEADER: "1"}
    )


def make_upstream(settings: Settings, client: httpx.AsyncClient, workflow: Workflow | None = None) -> Upstream:
    """The adapter the settings ask for; a ``workflow`` passed in code wins."""
    if workflow is not None:
        return PythonUpstream(workflow)
    kind = settings.resolved_upstream_kind
    if kind == "demo":
        demo = PythonUpstream(demo_workflow)
        demo.kind = "demo"
        return demo
    if kind == "python":
        return PythonUpstream(load_workflow(settings.upstream_url))
    if kind == "pull":  # the runtime gives it the line's job board (runtime.py)
        return PullUpstream(MemoryJobBoard("guest"))
    return HttpUpstream(
        client,
        settings.upstream_url,
        kind=kind,
        api_key=settings.upstream_api_key,
        model=settings.upstream_model,
        allowed_parameters=settings.upstream_allowed_parameter_names,
        max_answer_bytes=settings.max_answer_bytes,
        messages=settings.upstream_messages,
        system_prompt=settings.upstream_system_prompt,
    )
