"""The ``python`` kind: an async generator function run in-process (``module:function``).

A Python workflow is any async generator function taking the request::

    async def workflow(request: WorkflowRequest) -> AsyncIterator[str | Chunk]:
        yield "Hello, "
        yield Chunk("world", suggested_questions=["And then?"])
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

from ..errors import UpstreamError, UpstreamFailure
from .base import Chunk, Workflow, WorkflowRequest


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
        except UpstreamFailure:  # the workflow's own word (e.g. UpstreamUnavailable: ask again) stands
            raise
        except Exception as exc:
            raise UpstreamError(
                "The assistant failed while answering. Please try again.",
                detail=f"workflow raised {type(exc).__name__}: {exc}",
            ) from exc


def load_workflow(spec: str, *, named: str = "GUEST_UPSTREAM_URL") -> Workflow:
    """Import ``module:function`` and check it is an async generator function. ``named`` is what
    the user wrote it as, for the error (a setting, or a command's argument)."""
    module_name, sep, attr = spec.partition(":")
    where = f"{named}={spec!r}"
    if not sep or not module_name or not attr:
        raise ValueError(f"{where}: a python upstream is written module:function")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        hint = (
            " (modules are imported from the current directory, or --app-dir)"
            if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]
            else ""
        )
        raise ValueError(f"{where}: cannot import ({exc}){hint}") from exc
    if not inspect.isasyncgenfunction(target):
        raise ValueError(f"{where}: {attr} is not an async generator function")
    workflow: Workflow = target
    return workflow
