"""Lua scripts run in Redis, one ``.lua`` file each (package data).

A script may begin with ``--! include NAME`` lines: the named files (the shared
prelude of time, leases, tiers, epochs) are put before it, each once, in the
order their first includer names them. ``--! include names`` is the key names,
written from lines/redis/keys.py.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from ..lines.redis.keys import lua_names

INCLUDE = "--! include "
NAMES = "names"  # the include no file holds (lines/redis/keys.py's lua_names)


@cache
def load_script(name: str) -> str:
    """The text of ``scripts/NAME.lua``, its includes put before it."""
    parts: list[str] = []
    _gather(name, parts, set())
    return "\n".join(parts)


def _gather(name: str, parts: list[str], seen: set[str]) -> None:
    if name in seen:
        return
    seen.add(name)
    if name == NAMES:  # written from lines/redis/keys.py: the key names are spelled there only
        parts.append(lua_names())
        return
    text = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    for line in text.splitlines():
        if not line.startswith(INCLUDE):
            break
        _gather(line.removeprefix(INCLUDE).strip(), parts, seen)
    parts.append(text)
