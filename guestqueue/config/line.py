"""The settings a line may set for itself (a line's table in GUEST_CONFIG or the admin API;
linespec/keys.py): its upstream, its limits, its pacing and its guests' timings."""

from __future__ import annotations

from dataclasses import dataclass

from .values import setting


@dataclass(frozen=True, kw_only=True)
class LineSettings:
    """A line's own settings (checked by :class:`~guestqueue.config.Settings`, which has them all)."""

    max_concurrent_requests: int = setting(
        "GUEST_MAX_CONCURRENT_REQUESTS",
        3,
        "requests processed at once (worker pool size)",
        maximum=10_000,
    )
    max_queue_size: int = setting(
        "GUEST_MAX_QUEUE_SIZE",
        50,
        "requests waiting; beyond it 429",
        maximum=1_000_000,
    )
    request_timeout_s: float = setting(
        "GUEST_REQUEST_TIMEOUT_SEC",
        60.0,
        "processing time limit per request",
        maximum=86_400,
    )
    max_wait_s: float = setting(
        "GUEST_MAX_WAIT_SEC",
        600.0,
        "time limit in line (then error wait_timeout)",
        maximum=86_400,
    )
    upstream_url: str = setting("GUEST_UPSTREAM_URL", "", "upstream endpoint; empty = built-in demo", minimum=None)
    upstream_kind: str = setting(
        "GUEST_UPSTREAM_KIND", "auto", "http | openai | python | demo | pull | auto", minimum=None
    )
    upstream_model: str = setting("GUEST_UPSTREAM_MODEL", "", "model name for the openai kind", minimum=None)
    upstream_api_key: str = setting(
        "GUEST_UPSTREAM_API_KEY", "", "bearer token sent upstream", minimum=None, secret=True
    )
    upstream_interval_s: float = setting(
        "GUEST_UPSTREAM_INTERVAL_SEC",
        10.0,
        "minimum seconds between upstream call starts (0 = off)",
        maximum=3_600,
    )
    upstream_retries: int = setting(
        "GUEST_UPSTREAM_RETRIES",
        3,
        "retries before the first chunk was sent",
        maximum=10,
    )
    upstream_allowed_parameters: str = setting(
        "GUEST_UPSTREAM_ALLOWED_PARAMETERS",
        "temperature,top_p",
        "guest parameters forwarded to an openai upstream (comma-separated); others are dropped",
        minimum=None,
    )
    upstream_max_hold_s: float = setting(
        "GUEST_UPSTREAM_MAX_HOLD_SEC",
        120.0,
        "longest pause an upstream's Retry-After may impose on all calls",
        maximum=3_600,
    )
    upstream_messages: str = setting(
        "GUEST_UPSTREAM_MESSAGES",
        "conversation",
        "a caller's messages sent to an openai upstream: conversation "
        "(its user and assistant turns; its system turns are dropped) | all (as sent; the operator's only)",
        minimum=None,
    )
    upstream_system_prompt: str = setting(
        "GUEST_UPSTREAM_SYSTEM_PROMPT",
        "",
        "system message put first in every openai upstream call",
        minimum=None,
    )
    max_answer_bytes: int = setting(
        "GUEST_MAX_ANSWER_BYTES",
        1_048_576,
        "largest answer (UTF-8 bytes, all chunks); beyond it the call is "
        "closed and the guest gets error answer_too_large",
        minimum=1024,
        maximum=64 * 1_048_576,
    )
    position_update_s: float = setting(
        "GUEST_POSITION_UPDATE_SEC",
        1.0,
        "a waiting guest hears its place at least this often",
        minimum=0.05,
        maximum=60,
    )
    reconnect_grace_s: float = setting(
        "GUEST_RECONNECT_GRACE_SEC",
        5.0,
        "a dropped guest keeps its place this long",
        maximum=3_600,
    )
    history_size: int = setting(
        "GUEST_HISTORY_SIZE",
        100,
        "recent requests kept for diagnostics",
        maximum=10_000,
    )
    cache_size: int = setting("GUEST_CACHE_SIZE", 1000, "answer cache entries (0 = off)", maximum=100_000)
    cache_ttl_s: float = setting("GUEST_CACHE_TTL_SEC", 3600.0, "answer cache lifetime", maximum=604_800)
    max_query_chars: int = setting(
        "GUEST_MAX_QUERY_CHARS",
        4000,
        "longest query (422 beyond)",
        maximum=1_000_000,
    )
    max_per_client: int = setting(
        "GUEST_MAX_PER_CLIENT",
        2,
        "requests one client (address) may have in line or processing",
        maximum=1_000_000,
    )
