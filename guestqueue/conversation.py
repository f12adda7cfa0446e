"""The one rule for a caller's messages, at every door that takes them (the OpenAI front door's
``messages``; ``chat`` sends its query as the one user turn).

By default (``upstream_messages = "conversation"``) a caller's ``user`` and ``assistant`` turns
pass (the conversation so far, text only); its ``system`` turns (and ``developer`` and ``tool``
turns) are dropped, so they never replace or precede the line's own ``upstream_system_prompt``,
which goes first. ``"all"`` forwards the caller's messages as sent, after the line's prompt: only
the operator may choose it (linespec/ refuses it through the admin API).
"""

from __future__ import annotations

from typing import Any

CALLER_ROLES = ("user", "assistant")


def caller_turns(messages: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    """What of a caller's ``messages`` the line passes on."""
    if rule == "all":
        return messages
    return [
        {"role": message["role"], "content": message.get("content") or ""}
        for message in messages
        if message.get("role") in CALLER_ROLES
    ]


def conversation(messages: list[dict[str, Any]], rule: str, system_prompt: str) -> list[dict[str, Any]]:
    """The messages sent upstream: the line's system prompt first, then the caller's turns."""
    turns = caller_turns(messages, rule)
    return [{"role": "system", "content": system_prompt}, *turns] if system_prompt else turns
