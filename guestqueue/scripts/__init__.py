"""Lua scripts run in Redis, one ``.lua`` file each (package data)."""

from __future__ import annotations

from importlib.resources import files


def load_script(name: str) -> str:
    """The text of ``scripts/NAME.lua``."""
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
