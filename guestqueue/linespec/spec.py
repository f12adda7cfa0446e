"""A line as it runs: :class:`LineSpec` (its settings and its policy) and, for a waiting room,
:class:`Admission`. How each key is shown and kept comes from its declaration (keys.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..outbound import mask_url
from .keys import ADMISSION, POLICY, SECRET_KEYS, SETTING_KEYS
from .values import Webhook, Window

DEFAULT_LINE = "guest"
LINE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DEFAULT_STARVATION_S = 120.0


@dataclass(frozen=True, slots=True)
class Admission:
    """An admission line (a waiting room, seed 004): no upstream; guests at the front get a signed
    token while fewer than ``max_active`` sessions are open, ``batch_size`` per
    ``process_interval_s`` at most, spread evenly over it."""

    max_active: int = 100
    batch_size: int = 10
    process_interval_s: float = 1.0
    session_ttl_s: float = 600.0
    redirect_url: str = ""
    max_sessions_per_client: int = 2  # open sessions and places in line, together, of one client
    token_secret: str = field(default="", repr=False)  # the line's own HS256 secret (else the process's key)

    def as_dict(self, *, secrets: bool = False) -> dict[str, Any]:
        """The keys as in the file; the token secret only with ``secrets`` (what is kept), else masked."""
        if secrets:
            return {key.name: key.kept(getattr(self, key.field)) for key in ADMISSION}
        return {key.name: key.show(getattr(self, key.field)) for key in ADMISSION}


@dataclass(frozen=True, kw_only=True)
class LineSpec:
    """One line: its settings (the process's, with the line's own on top) and its policy."""

    name: str
    settings: Settings
    overrides: Mapping[str, Any] = field(default_factory=dict)  # the line's own setting keys, as given
    mode: str = "open"
    message: str = ""  # shown to guests in queue_all and reject modes
    schedule: tuple[Window, ...] = ()
    max_predicted_wait_s: float = 0.0  # 0 = admit whatever the estimate
    release_per_minute: int = 0  # starts in any 60 s window at most; 0 = only the interval paces
    public: bool = True  # chat needs no key
    tiers: tuple[str, ...] = ()  # highest first
    default_tier: str = ""
    fairness: str = "fifo"  # "fair": the least served share starts first within a tier (fairness.py)
    max_starvation_s: float = DEFAULT_STARVATION_S
    application_id: str | None = None
    purged_at: float = 0.0  # Unix time of the last purge (MANAGE): guests waiting then were sent away
    webhooks: tuple[Webhook, ...] = ()
    # Thresholds of the line_threshold event (0 = off): guests waiting, p95 of the last waits,
    # share of the last endings that failed or timed out.
    alert_queue_size: int = 0
    alert_wait_p95_s: float = 0.0
    alert_failure_rate: float = 0.0
    admission: Admission | None = None  # set by mode = "admission"
    max_receive_count: int = 3  # a pull line's job goes back to the front at most this many times
    openai_model: str = ""  # another name OpenAI clients may ask this line by (web/openai/)
    # The upstream URL is the operator's (the file, GUEST_*): it may reach any address. A tenant's
    # (the admin API) reaches only what the outbound rule allows (outbound.py).
    upstream_trusted: bool = True

    def mode_at(self, now: float) -> str:
        """The mode at Unix time ``now``: the last scheduled window holding it, else ``mode``."""
        for window in reversed(self.schedule):
            if window.start <= now < window.end:
                return window.mode
        return self.mode

    def tier_rank(self, tier: str | None) -> int:
        """0 = the highest tier; an unknown or missing tier is the line's default."""
        if not self.tiers:
            return 0
        if tier in self.tiers:
            return self.tiers.index(tier)
        return self.tiers.index(self.default_tier)

    def as_dict(self) -> dict[str, Any]:
        """The line as the admin API shows it: keys as in the file, secrets never."""
        out: dict[str, Any] = {"name": self.name}
        for key, name in SETTING_KEYS.items():
            value = getattr(self.settings, name)
            out[key] = ("***" if value else "") if key in SECRET_KEYS else value
        if "://" in self.settings.upstream_url:
            out["upstream_url"] = mask_url(self.settings.upstream_url)
        out["upstream_kind"] = self.settings.resolved_upstream_kind
        out.update({key.name: key.show(getattr(self, key.field)) for key in POLICY})
        if self.admission is not None:
            out.update(self.admission.as_dict())
        return out

    def stored(self) -> dict[str, Any]:
        """What is kept (SQLite, Redis) to build the line again: the keys as given, secrets included."""
        out: dict[str, Any] = dict(self.overrides)
        out.update({key.name: key.kept(getattr(self, key.field)) for key in POLICY})
        if self.admission is not None:
            out.update(self.admission.as_dict(secrets=True))
        return out


def default_line(settings: Settings) -> LineSpec:
    return LineSpec(name=DEFAULT_LINE, settings=settings)
