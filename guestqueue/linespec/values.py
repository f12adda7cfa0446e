"""The values of a line's keys that are more than a number: its webhooks and its schedule's windows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..config import SettingsError
from ..outbound import OutboundPolicy, mask_url, url_problem

WEBHOOK_EVENTS = ("admitted", "completed", "failed", "timeout", "cancelled", "line_threshold", "upstream_degraded")
MAX_WEBHOOKS = 20  # per line, whoever declares it; an application's own quota may be lower (tenancy/catalog.py)
WINDOW_MODES = ("open", "paused", "queue_all", "reject")


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    events: tuple[str, ...]
    secret: str

    def as_dict(self) -> dict[str, Any]:
        """As the admin API shows it: never the secret, nor one inside the URL (a Slack hook's path)."""
        return {"url": mask_url(self.url), "events": list(self.events), "secret": "***"}

    def kept(self) -> dict[str, Any]:
        """As it is stored, to build the line again: the secret included."""
        return {"url": self.url, "events": list(self.events), "secret": self.secret}


def parse_webhooks(
    value: Any, where: str, *, outbound: OutboundPolicy | None = None, operator: Iterable[Webhook] = ()
) -> tuple[Webhook, ...]:
    """The ``webhooks`` of a line's table (webhooks/ sends them). With ``outbound`` (a tenant's
    table), a URL that is not the ``operator``'s own must be one the outbound rule lets us reach."""
    if not isinstance(value, list):
        raise SettingsError(f"{where}: webhooks: must be a list of tables with url, events and secret")
    if len(value) > MAX_WEBHOOKS:
        raise SettingsError(f"{where}: webhooks: at most {MAX_WEBHOOKS} per line (it has {len(value)})")
    operator_urls = {hook.url for hook in operator}
    hooks = []
    for n, item in enumerate(value):
        at = f"{where} webhooks[{n}]"
        if not isinstance(item, Mapping) or set(item) - {"url", "events", "secret"}:
            raise SettingsError(f"{at}: a webhook has url, events and secret")
        url = item.get("url")
        problem = url_problem(url)
        if problem:
            raise SettingsError(f"{at}: url={mask_url(url) if isinstance(url, str) else url!r}: {problem}")
        assert isinstance(url, str)
        # (webhooks/ sends the operator's own URLs, the file's, with the unguarded client)
        if outbound is not None and url not in operator_urls and (refused := outbound.refuses_url(url)):
            raise SettingsError(f"{at}: url={mask_url(url)!r}: {refused}")
        events = item.get("events", list(WEBHOOK_EVENTS))
        if not isinstance(events, list) or not events or any(e not in WEBHOOK_EVENTS for e in events):
            raise SettingsError(f"{at}: events: a list of {', '.join(WEBHOOK_EVENTS)}")
        secret = item.get("secret")
        if not isinstance(secret, str) or len(secret) < 16:
            raise SettingsError(f"{at}: secret: a string of at least 16 characters (it signs every delivery)")
        hooks.append(Webhook(url, tuple(dict.fromkeys(events)), secret))
    return tuple(hooks)


@dataclass(frozen=True, slots=True)
class Window:
    """A scheduled mode: from ``start`` (inclusive) to ``end`` (exclusive), Unix seconds."""

    start: float
    end: float
    mode: str

    def as_dict(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "end": _iso(self.end), "mode": self.mode}


def parse_window(item: Any, where: str) -> Window:
    if not isinstance(item, Mapping) or set(item) != {"start", "end", "mode"}:
        raise SettingsError(f"{where}: a window is a table with start, end and mode")
    start, end = _instant(item["start"], f"{where} start"), _instant(item["end"], f"{where} end")
    if end <= start:
        raise SettingsError(f"{where}: end must be after start")
    if item["mode"] not in WINDOW_MODES:
        raise SettingsError(f"{where}: mode={item['mode']!r}: must be one of {', '.join(WINDOW_MODES)}")
    return Window(start, end, item["mode"])


def _instant(value: Any, where: str) -> float:
    """A TOML offset date-time, or the same as an ISO 8601 string (JSON); never a local time."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise SettingsError(f"{where}={value!r}: not an ISO 8601 date-time") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise SettingsError(f"{where}={value!r}: must be a date-time with its offset (2026-12-01T02:00:00Z)")
    return value.timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
