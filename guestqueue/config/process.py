"""The settings of the process, which no line sets: where it listens, its log, Redis, its edge
limits, its keys and its doors."""

from __future__ import annotations

from dataclasses import dataclass

from .values import ADMIN_KEY_MIN_CHARS, TOKEN_SECRET_MIN_CHARS, setting


@dataclass(frozen=True, kw_only=True)
class ProcessSettings:
    """The process's own settings (checked by :class:`~guestqueue.config.Settings`, which has them all)."""

    host: str = setting("GUEST_HOST", "127.0.0.1", "address `guestqueue serve` listens on", minimum=None)
    port: int = setting("GUEST_PORT", 8000, "port `guestqueue serve` listens on")
    ping_s: float = setting("GUEST_PING_SEC", 15.0, "SSE comment ping on quiet streams")
    send_timeout_s: float = setting(
        "GUEST_SEND_TIMEOUT_SEC", 30.0, "a guest that takes no bytes for this long is let go"
    )
    db_path: str = setting("GUEST_DB_PATH", "guestqueue.db", "SQLite request log (empty = off)", minimum=None)
    log_buffer_rows: int = setting(
        "GUEST_LOG_BUFFER_ROWS", 100_000, "request log rows held while SQLite is behind; beyond it new rows are dropped"
    )
    log_retention_days: float = setting(
        "GUEST_LOG_RETENTION_DAYS", 30.0, "request log rows older than this are deleted (0 = keep forever)"
    )
    instance_ttl_s: float = setting(
        "GUEST_INSTANCE_TTL_SEC", 5.0, "an instance silent this long is dead (its open log rows become abandoned)"
    )
    redis_url: str = setting(
        "GUEST_REDIS_URL",
        "",
        "redis://host:port/db shared by several instances; empty = the line in this process",
        minimum=None,
        secret=True,
    )
    redis_prefix: str = setting(
        "GUEST_REDIS_PREFIX",
        "guestqueue",
        "key prefix in Redis (several deployments may share one Redis)",
        minimum=None,
    )
    workers: int = setting("GUEST_WORKERS", 1, "server processes sharing the port (more than 1 needs GUEST_REDIS_URL)")
    max_body_bytes: int = setting("GUEST_MAX_BODY_BYTES", 65536, "largest request body (413 beyond)")
    max_per_key: int = setting(
        "GUEST_MAX_PER_KEY",
        16,
        "requests one application API key may have in line or processing (callers "
        "with a key are counted per key, not per address)",
        maximum=1_000_000,
    )
    admin_api_key: str = setting(
        "GUEST_ADMIN_API_KEY",
        "",
        f"X-API-Key required by history and metrics (at least {ADMIN_KEY_MIN_CHARS} characters); "
        "empty = they answer only local callers",
        minimum=None,
        secret=True,
    )
    public_status: bool = setting(
        "GUEST_PUBLIC_STATUS",
        True,
        "anyone may read /queue/status (aggregate counts only); false = it needs the admin key too",
        minimum=None,
    )
    cors_origins: str = setting("GUEST_CORS_ORIGINS", "", "comma-separated allowed origins", minimum=None)
    outbound_allow: str = setting(
        "GUEST_OUTBOUND_ALLOW",
        "",
        "CIDRs (comma-separated, or *) that lines and webhooks made through the admin "
        "API may reach although they are loopback, private, link-local or this server's own (outbound.py)",
        minimum=None,
    )
    trusted_proxies: str = setting(
        "GUEST_TRUSTED_PROXIES",
        "",
        "proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed",
        minimum=None,
    )
    shutdown_grace_s: float = setting("GUEST_SHUTDOWN_GRACE_SEC", 30.0, "on SIGTERM, how long running work may finish")
    http: str = setting(
        "GUEST_HTTP",
        "h11",
        "HTTP parser: h11 (guards the request head itself) or httptools (faster; it does not, so only "
        "behind a proxy that limits headers, like nginx.conf: needs GUEST_TRUSTED_PROXIES)",
        minimum=None,
    )
    max_header_bytes: int = setting(
        "GUEST_MAX_HEADER_BYTES", 65536, "largest request line plus headers (400 and closed beyond)"
    )
    header_timeout_s: float = setting(
        "GUEST_HEADER_TIMEOUT_SEC", 10.0, "a connection whose request line and headers are not in by then is closed"
    )
    body_timeout_s: float = setting(
        "GUEST_BODY_TIMEOUT_SEC", 10.0, "a request body not fully received by then gets 408 body_timeout"
    )
    max_connections: int = setting(
        "GUEST_MAX_CONNECTIONS", 0, "open connections at most (0 = the open-file limit minus a reserve)"
    )
    backlog: int = setting("GUEST_BACKLOG", 2048, "connections the kernel queues before they are accepted")
    webhook_backoff_s: float = setting(
        "GUEST_WEBHOOK_BACKOFF_SEC", 1.0, "a failed webhook delivery is tried again after this, doubling (3 retries)"
    )
    token_secret: str = setting(
        "GUEST_TOKEN_SECRET",
        "",
        f"signs admission lines' tokens with HS256 (at least {TOKEN_SECRET_MIN_CHARS} "
        "characters; the same on every instance)",
        minimum=None,
        secret=True,
    )
    token_key_file: str = setting(
        "GUEST_TOKEN_KEY_FILE",
        "",
        "PEM private key signing admission tokens with RS256 or ES256 instead (its public key is served as JWKS)",
        minimum=None,
    )
    openai_prefix: str = setting(
        "GUEST_OPENAI_PREFIX",
        "/v1",
        "where the OpenAI-compatible API is mounted (chat/completions, models); empty = off",
        minimum=None,
    )
    config: str = setting(
        "GUEST_CONFIG",
        "",
        "TOML file declaring named lines ([lines.NAME] tables); empty = one line `guest` from these settings",
        minimum=None,
    )
