"""The rows the request log writes: a request's admission (an INSERT), its start and end (UPDATEs
of that row), and a refusal (a row without the question's text)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from ..tickets import Ticket, new_request_id
from ..upstream import valid_text

QUERY_HASH_HEX = 16


def admission_row(ticket: Ticket, instance_id: str, line: str) -> tuple[Any, ...]:
    """The INSERT's values (schema.COLUMNS)."""
    return (
        ticket.id,
        ticket.client,
        ticket.query,
        _json(ticket.parameters),
        ticket.session_id,
        ticket.status.value,
        None,
        None,
        None,
        int(ticket.cached),
        ticket.created_at,
        None,
        None,
        None,
        None,
        instance_id,
        line,
    )


def change_row(ticket: Ticket, instance_id: str) -> tuple[Any, ...]:
    """The UPDATE's values (schema.UPDATED, then the request id)."""
    return (
        ticket.status.value,
        ticket.error_code,
        ticket.error_detail or ticket.error,
        ticket.answer if ticket.done else None,
        int(ticket.cached),
        ticket.started_at,
        ticket.finished_at,
        ticket.wait_ms,
        ticket.duration_ms,
        instance_id,
        ticket.id,
    )


def rejection_row(client: str, query: str, code: str, suppressed: int, instance_id: str, line: str) -> tuple[Any, ...]:
    """A 429/503 as an INSERT: the question's length and a hash prefix, never its text; with how
    many of this client's refusals got no row since its last one (``suppressed``)."""
    parameters: dict[str, Any] = {"query_chars": len(query), "query_sha256": _short_hash(query)}
    if suppressed:
        parameters["suppressed"] = suppressed
    wall = time.time()
    return (
        new_request_id(),
        client,
        "",
        _json(parameters),
        None,
        "rejected",
        code,
        None,
        None,
        0,
        wall,
        None,
        wall,
        None,
        None,
        instance_id,
        line,
    )


def valid_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row SQLite could not take, with U+FFFD where its text was not valid UTF-8."""
    return tuple(valid_text(value) if isinstance(value, str) else value for value in row)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:QUERY_HASH_HEX]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
