"""Settings: one frozen dataclass, read from ``GUEST_*`` variables and ``serve`` flags.

Every field carries its environment variable in its metadata; the CLI derives
its flags from the same table, so the two can never drift apart::

    settings = Settings.from_env()                       # GUEST_* from os.environ
    settings = Settings(max_concurrent_requests=1)       # or built in code
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import parse_url as parse_redis_url

UPSTREAM_KINDS = ("auto", "http", "openai", "python", "demo", "pull")
AT_LEAST_ONE = (
    "max_concurrent_requests",
    "max_queue_size",
    "max_body_bytes",
    "max_query_chars",
    "log_buffer_rows",
    "max_header_bytes",
    "backlog",
    "workers",
)
# Durations that must be above zero (a zero timeout or tick would end or spin everything at once).
ABOVE_ZERO = (
    "request_timeout_s",
    "position_update_s",
    "send_timeout_s",
    "instance_ttl_s",
    "header_timeout_s",
    "body_timeout_s",
)
PYTHON_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
ADMIN_KEY_MIN_CHARS = 16
MAX_TEXT_CHARS = 20_000  # any text setting: a URL, a key, a system prompt
MESSAGE_RULES = ("conversation", "all")
TOKEN_SECRET_MIN_CHARS = 32
URL_KINDS = ("http", "openai")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# Body fields of an openai request that guestqueue sets itself; never taken from a guest.
OPENAI_RESERVED_PARAMETERS = ("messages", "model", "stream")
REDIS_SCHEMES = ("redis", "rediss", "unix")
# redis-py also reads a password from the query (``?password=...``): never printed either.
REDIS_QUERY_PASSWORD = re.compile(r"(?i)(^|&)(password=)[^&]*")


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names variable and value."""


def _setting(
    env: str,
    default: Any,
    help: str,
    *,
    minimum: float | None = 0,
    maximum: float | None = None,
    secret: bool = False,
) -> Any:
    """A setting and its bounds. ``maximum`` (numbers) or the length (text) is what no real deployment
    needs to exceed: a line's tenant sets these keys too, and nothing they set may grow memory or
    CPU without bound (one task per slot, one tick per ``position_update_sec``)."""
    return field(
        default=default,
        repr=not secret,
        metadata={"env": env, "help": help, "minimum": minimum, "maximum": maximum},
    )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything guestqueue can be told, with the defaults of DESIGN.md."""

    host: str = _setting("GUEST_HOST", "127.0.0.1", "address `guestqueue serve` listens on", minimum=None)
    port: int = _setting("GUEST_PORT", 8000, "port `guestqueue serve` listens on")
    max_concurrent_requests: int = _setting(
        "GUEST_MAX_CONCURRENT_REQUESTS",
        3,
        "requests processed at once (worker pool size)",
        maximum=10_000,
    )
    max_queue_size: int = _setting(
        "GUEST_MAX_QUEUE_SIZE",
        50,
        "requests waiting; beyond it 429",
        maximum=1_000_000,
    )
    request_timeout_s: float = _setting(
        "GUEST_REQUEST_TIMEOUT_SEC",
        60.0,
        "processing time limit per request",
        maximum=86_400,
    )
    max_wait_s: float = _setting(
        "GUEST_MAX_WAIT_SEC",
        600.0,
        "time limit in line (then error wait_timeout)",
        maximum=86_400,
    )
    upstream_url: str = _setting("GUEST_UPSTREAM_URL", "", "upstream endpoint; empty = built-in demo", minimum=None)
    upstream_kind: str = _setting(
        "GUEST_UPSTREAM_KIND", "auto", "http | openai | python | demo | pull | auto", minimum=None
    )
    upstream_model: str = _setting("GUEST_UPSTREAM_MODEL", "", "model name for the openai kind", minimum=None)
    upstream_api_key: str = _setting(
        "GUEST_UPSTREAM_API_KEY", "", "bearer token sent upstream", minimum=None, secret=True
    )
    upstream_interval_s: float = _setting(
        "GUEST_UPSTREAM_INTERVAL_SEC",
        10.0,
        "minimum seconds between upstream call starts (0 = off)",
        maximum=3_600,
    )
    upstream_retries: int = _setting(
        "GUEST_UPSTREAM_RETRIES",
        3,
        "retries before the first chunk was sent",
        maximum=10,
    )
    upstream_allowed_parameters: str = _setting(
        "GUEST_UPSTREAM_ALLOWED_PARAMETERS",
        "temperature,top_p",
        "guest parameters forwarded to an openai upstream (comma-separated); others are dropped",
        minimum=None,
    )
    upstream_max_hold_s: float = _setting(
        "GUEST_UPSTREAM_MAX_HOLD_SEC",
        120.0,
        "longest pause an upstream's Retry-After may impose on all calls",
        maximum=3_600,
    )
    upstream_messages: str = _setting(
        "GUEST_UPSTREAM_MESSAGES",
        "conversation",
        "a caller's messages sent to an openai upstream: conversation "
        "(its user and assistant turns; its system turns are dropped) | all (as sent; the operator's only)",
        minimum=None,
    )
    upstream_system_prompt: str = _setting(
        "GUEST_UPSTREAM_SYSTEM_PROMPT",
        "",
        "system message put first in every openai upstream call",
        minimum=None,
    )
    max_answer_bytes: int = _setting(
        "GUEST_MAX_ANSWER_BYTES",
        1_048_576,
        "largest answer (UTF-8 bytes, all chunks); beyond it the call is "
        "closed and the guest gets error answer_too_large",
        minimum=1024,
        maximum=64 * 1_048_576,
    )
    position_update_s: float = _setting(
        "GUEST_POSITION_UPDATE_SEC",
        1.0,
        "a waiting guest hears its place at least this often",
        minimum=0.05,
        maximum=60,
    )
    ping_s: float = _setting("GUEST_PING_SEC", 15.0, "SSE comment ping on quiet streams")
    send_timeout_s: float = _setting(
        "GUEST_SEND_TIMEOUT_SEC", 30.0, "a guest that takes no bytes for this long is let go"
    )
    reconnect_grace_s: float = _setting(
        "GUEST_RECONNECT_GRACE_SEC",
        5.0,
        "a dropped guest keeps its place this long",
        maximum=3_600,
    )
    history_size: int = _setting(
        "GUEST_HISTORY_SIZE",
        100,
        "recent requests kept for diagnostics",
        maximum=10_000,
    )
    cache_size: int = _setting("GUEST_CACHE_SIZE", 1000, "answer cache entries (0 = off)", maximum=100_000)
    cache_ttl_s: float = _setting("GUEST_CACHE_TTL_SEC", 3600.0, "answer cache lifetime", maximum=604_800)
    db_path: str = _setting("GUEST_DB_PATH", "guestqueue.db", "SQLite request log (empty = off)", minimum=None)
    log_buffer_rows: int = _setting(
        "GUEST_LOG_BUFFER_ROWS", 100_000, "request log rows held while SQLite is behind; beyond it new rows are dropped"
    )
    log_retention_days: float = _setting(
        "GUEST_LOG_RETENTION_DAYS", 30.0, "request log rows older than this are deleted (0 = keep forever)"
    )
    instance_ttl_s: float = _setting(
        "GUEST_INSTANCE_TTL_SEC", 5.0, "an instance silent this long is dead (its open log rows become abandoned)"
    )
    redis_url: str = _setting(
        "GUEST_REDIS_URL",
        "",
        "redis://host:port/db shared by several instances; empty = the line in this process",
        minimum=None,
        secret=True,
    )
    redis_prefix: str = _setting(
        "GUEST_REDIS_PREFIX",
        "guestqueue",
        "key prefix in Redis (several deployments may share one Redis)",
        minimum=None,
    )
    workers: int = _setting("GUEST_WORKERS", 1, "server processes sharing the port (more than 1 needs GUEST_REDIS_URL)")
    max_body_bytes: int = _setting("GUEST_MAX_BODY_BYTES", 65536, "largest request body (413 beyond)")
    max_query_chars: int = _setting(
        "GUEST_MAX_QUERY_CHARS",
        4000,
        "longest query (422 beyond)",
        maximum=1_000_000,
    )
    max_per_client: int = _setting(
        "GUEST_MAX_PER_CLIENT",
        2,
        "requests one client (address) may have in line or processing",
        maximum=1_000_000,
    )
    max_per_key: int = _setting(
        "GUEST_MAX_PER_KEY",
        16,
        "requests one application API key may have in line or processing (callers "
        "with a key are counted per key, not per address)",
        maximum=1_000_000,
    )
    admin_api_key: str = _setting(
        "GUEST_ADMIN_API_KEY",
        "",
        f"X-API-Key required by history and metrics (at least {ADMIN_KEY_MIN_CHARS} characters); "
        "empty = they answer only local callers",
        minimum=None,
        secret=True,
    )
    public_status: bool = _setting(
        "GUEST_PUBLIC_STATUS",
        True,
        "anyone may read /queue/status (aggregate counts only); false = it needs the admin key too",
        minimum=None,
    )
    cors_origins: str = _setting("GUEST_CORS_ORIGINS", "", "comma-separated allowed origins", minimum=None)
    outbound_allow: str = _setting(
        "GUEST_OUTBOUND_ALLOW",
        "",
        "CIDRs (comma-separated, or *) that lines and webhooks made through the admin "
        "API may reach although they are loopback, private, link-local or this server's own (outbound.py)",
        minimum=None,
    )
    trusted_proxies: str = _setting(
        "GUEST_TRUSTED_PROXIES",
        "",
        "proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed",
        minimum=None,
    )
    shutdown_grace_s: float = _setting("GUEST_SHUTDOWN_GRACE_SEC", 30.0, "on SIGTERM, how long running work may finish")
    max_header_bytes: int = _setting(
        "GUEST_MAX_HEADER_BYTES", 65536, "largest request line plus headers (400 and closed beyond)"
    )
    header_timeout_s: float = _setting(
        "GUEST_HEADER_TIMEOUT_SEC", 10.0, "a connection whose request line and headers are not in by then is closed"
    )
    body_timeout_s: float = _setting(
        "GUEST_BODY_TIMEOUT_SEC", 10.0, "a request body not fully received by then gets 408 body_timeout"
    )
    max_connections: int = _setting(
        "GUEST_MAX_CONNECTIONS", 0, "open connections at most (0 = the open-file limit minus a reserve)"
    )
    backlog: int = _setting("GUEST_BACKLOG", 2048, "connections the kernel queues before they are accepted")
    webhook_backoff_s: float = _setting(
        "GUEST_WEBHOOK_BACKOFF_SEC", 1.0, "a failed webhook delivery is tried again after this, doubling (3 retries)"
    )
    token_secret: str = _setting(
        "GUEST_TOKEN_SECRET",
        "",
        f"signs admission lines' tokens with HS256 (at least {TOKEN_SECRET_MIN_CHARS} "
        "characters; the same on every instance)",
        minimum=None,
        secret=True,
    )
    token_key_file: str = _setting(
        "GUEST_TOKEN_KEY_FILE",
        "",
        "PEM private key signing admission tokens with RS256 or ES256 instead (its public key is served as JWKS)",
        minimum=None,
    )
    openai_prefix: str = _setting(
        "GUEST_OPENAI_PREFIX",
        "/v1",
        "where the OpenAI-compatible API is mounted (chat/completions, models); empty = off",
        minimum=None,
    )
    config: str = _setting(
        "GUEST_CONFIG",
        "",
        "TOML file declaring named lines ([lines.NAME] tables); empty = one line `guest` from these settings",
        minimum=None,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            minimum, maximum = f.metadata["minimum"], f.metadata["maximum"]
            if minimum is not None and value < minimum:
                raise SettingsError(f"{f.metadata['env']}={value!r}: must be >= {minimum}")
            if maximum is not None and value > maximum:
                raise SettingsError(f"{f.metadata['env']}={value!r}: must be <= {maximum:_}")
            if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
                raise SettingsError(f"{f.metadata['env']}: at most {MAX_TEXT_CHARS} characters (it has {len(value)})")
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise SettingsError(f"{ENV_NAMES[name]}={getattr(self, name)!r}: must be >= 1")
        for name in ABOVE_ZERO:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{ENV_NAMES[name]}={getattr(self, name)!r}: must be > 0")
        if not 0 < self.port < 65536:
            raise SettingsError(f"GUEST_PORT={self.port!r}: must be a port number (1-65535)")
        if self.upstream_kind not in UPSTREAM_KINDS:
            raise SettingsError(
                f"GUEST_UPSTREAM_KIND={self.upstream_kind!r}: must be one of {', '.join(UPSTREAM_KINDS)}"
            )
        if self.upstream_kind in ("http", "openai", "python") and not self.upstream_url:
            raise SettingsError(f"GUEST_UPSTREAM_KIND={self.upstream_kind!r} needs GUEST_UPSTREAM_URL")
        self._check_upstream_url()
        if self.upstream_messages not in MESSAGE_RULES:
            raise SettingsError(
                f"GUEST_UPSTREAM_MESSAGES={self.upstream_messages!r}: must be one of {', '.join(MESSAGE_RULES)}"
            )
        problem = cidrs_problem(self.outbound_allow)
        if problem:
            raise SettingsError(f"GUEST_OUTBOUND_ALLOW={self.outbound_allow!r}: {problem}")
        self._check_upstream_combination()
        self._check_redis()
        if self.admin_api_key and len(self.admin_api_key) < ADMIN_KEY_MIN_CHARS:
            # A short key falls to guessing; the message never shows the key itself.
            raise SettingsError(
                f"GUEST_ADMIN_API_KEY: must be at least {ADMIN_KEY_MIN_CHARS} characters "
                f"(it has {len(self.admin_api_key)})"
            )
        if self.openai_prefix and (
            not self.openai_prefix.startswith("/")
            or self.openai_prefix.endswith("/")
            or self.openai_prefix.startswith("/api/v1/")
        ):
            raise SettingsError(f"GUEST_OPENAI_PREFIX={self.openai_prefix!r}: a path like /v1 (not under /api/v1/)")
        if self.token_secret and len(self.token_secret) < TOKEN_SECRET_MIN_CHARS:
            raise SettingsError(
                f"GUEST_TOKEN_SECRET: must be at least {TOKEN_SECRET_MIN_CHARS} characters "
                f"(it has {len(self.token_secret)}); HS256 wants a key as long as its hash"
            )
        reserved = sorted(set(self.upstream_allowed_parameter_names) & set(OPENAI_RESERVED_PARAMETERS))
        if reserved:
            raise SettingsError(
                f"GUEST_UPSTREAM_ALLOWED_PARAMETERS={self.upstream_allowed_parameters!r}: "
                f"{', '.join(reserved)} cannot come from guests"
            )

    @property
    def resolved_upstream_kind(self) -> str:
        """`auto` made concrete: no URL is the demo, `module:function` is python; a URL is openai when
        it ends in ``/v1`` or ``/chat/completions`` or a model is named, else http."""
        if self.upstream_kind != "auto":
            return self.upstream_kind
        url = self.upstream_url
        if not url:
            return "demo"
        if "://" not in url and ":" in url:
            return "python"
        path = url.split("?", 1)[0].rstrip("/")
        if path.endswith(("/chat/completions", "/v1")) or self.upstream_model:
            return "openai"
        return "http"

    def _check_upstream_url(self) -> None:
        """A URL an operator mistyped fails here, at start-up, not at the first guest's question."""
        url, kind = self.upstream_url, self.resolved_upstream_kind
        if kind == "python":
            if not PYTHON_TARGET.fullmatch(url):
                raise SettingsError(
                    f"GUEST_UPSTREAM_URL={url!r}: a python upstream is module:function (e.g. mypkg.bot:answer); "
                    "a URL starts with http:// or https://"
                )
        elif kind in URL_KINDS:
            parsed = urlsplit(url)
            if "@" in parsed.netloc:  # the message is printed: never with the URL's password
                url = parsed._replace(netloc="***@" + parsed.netloc.rpartition("@")[2]).geturl()
            if any(ord(c) < 33 or ord(c) == 127 for c in url):  # a header injection, or a typo
                raise SettingsError(f"GUEST_UPSTREAM_URL={url!r}: must not hold spaces or control characters")
            try:
                parsed.port  # noqa: B018 -- raises ValueError on a port out of range or not a number
            except ValueError:
                raise SettingsError(f"GUEST_UPSTREAM_URL={url!r}: the port is not a number in 0-65535") from None
            if parsed.scheme.lower() not in ("http", "https") or not parsed.hostname:
                raise SettingsError(
                    f"GUEST_UPSTREAM_URL={url!r}: must be an http:// or https:// URL with a host "
                    "(or module:function for a python upstream)"
                )

    def _check_redis(self) -> None:
        if self.workers > 1 and not self.redis_url:
            raise SettingsError(
                f"GUEST_WORKERS={self.workers}: several processes need one shared line: set GUEST_REDIS_URL"
            )
        if self.redis_url:
            problem = redis_url_problem(self.redis_url)
            if problem:
                raise SettingsError(f"GUEST_REDIS_URL={shown_redis_url(self.redis_url)!r}: {problem}")
        if not self.redis_prefix or any(c.isspace() for c in self.redis_prefix):
            raise SettingsError(f"GUEST_REDIS_PREFIX={self.redis_prefix!r}: must be a non-empty word without spaces")

    def _check_upstream_combination(self) -> None:
        kind = self.resolved_upstream_kind
        if kind == "pull" and self.upstream_url:
            raise SettingsError(
                f"GUEST_UPSTREAM_URL={self.upstream_url!r}: a pull line has no URL; its workers come for its jobs"
            )
        if kind == "openai" and not self.upstream_model:
            # A guest may not choose the model (nor its cost): it comes only from here.
            raise SettingsError("GUEST_UPSTREAM_MODEL='': an openai upstream needs a model name")
        if self.upstream_model and kind != "openai":
            why = "no GUEST_UPSTREAM_URL is set" if not self.upstream_url else f"the upstream kind is {kind!r}"
            raise SettingsError(
                f"GUEST_UPSTREAM_MODEL={self.upstream_model!r}: only an openai upstream takes a model, and {why}"
            )

    @property
    def upstream_allowed_parameter_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.upstream_allowed_parameters.split(",") if name.strip())

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``GUEST_*`` variables; keyword overrides (e.g. CLI flags) win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env = f.metadata["env"]
            if f.name in overrides and overrides[f.name] is not None:
                values[f.name] = parse_value(env, str(overrides[f.name]), f.type)
            elif env in environ:
                values[f.name] = parse_value(env, environ[env], f.type)
        return cls(**values)


# GUEST_* variables read by something other than Settings (examples, `guestqueue worker`).
OTHER_VARIABLES = frozenset({"GUEST_WORKER_KEY", "GUEST_TOKEN_SECRET"})


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``GUEST_*`` variable no setting reads (a typo starts silently with the
    default otherwise), naming the closest real one."""
    environ = os.environ if environ is None else environ
    known = set(ENV_NAMES.values()) | OTHER_VARIABLES
    warnings = []
    for name in sorted(n for n in environ if n.startswith("GUEST_") and n not in known):
        # Compared without the prefix every name shares, or GUEST_FOO would be "close" to GUEST_PORT.
        close = difflib.get_close_matches(name[6:], sorted(k[6:] for k in known), n=1, cutoff=0.7)
        hint = f"; did you mean GUEST_{close[0]}?" if close else " (guestqueue serve --help lists the settings)"
        warnings.append(f"{name} is not a guestqueue setting and is ignored{hint}")
    return warnings


def cidrs_problem(raw: str) -> str | None:
    """Why ``raw`` is not a comma-separated list of CIDRs (or ``*``), or None."""
    for item in (item.strip() for item in raw.split(",")):
        if not item or item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an address or CIDR (e.g. 10.0.0.0/8, 127.0.0.1)"
    return None


def redis_url_problem(url: str) -> str | None:
    """Why redis-py could not use ``url`` (or would quietly use another database), or None.

    Found at start-up rather than as a traceback in every worker, or as database 0 for a
    mistyped ``redis://host/one``."""
    parsed = urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme not in REDIS_SCHEMES:
        return "must be a redis://host:port/db, rediss://host:port/db or unix:///path/to/socket URL"
    try:
        parsed.port  # noqa: B018 -- raises ValueError on a port out of range or not a number
    except ValueError:
        return "the port is not a number in 0-65535"
    if scheme == "unix":
        if not parsed.path:
            return "a unix:// URL needs the socket's path (unix:///run/redis/redis.sock)"
    else:
        if not parsed.hostname:
            return f"a {scheme}:// URL needs a host ({scheme}://host:port/db)"
        database = parsed.path.strip("/")
        if database and not database.isdigit():
            # redis-py would take database 0 without a word: another deployment's line, perhaps.
            return f"the database after the host must be a number ({scheme}://host:port/0), not {database!r}"
    try:
        parse_redis_url(url)  # the query's options, read as redis-py will read them at connection time
    except ValueError as exc:
        return str(exc)  # names the option, never its value
    return None


def shown_redis_url(url: str) -> str:
    """``url`` as it may be printed: its password, in the user part or the query, as ``***``."""
    parsed = urlsplit(url)
    netloc, query = parsed.netloc, REDIS_QUERY_PASSWORD.sub(r"\1\2***", parsed.query)
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name, colon, _password = user.partition(":")
        # Without a colon the whole user part may be a password typed in the wrong place.
        netloc = f"{name}:***@{host}" if colon else f"***@{host}"
    if (netloc, query) == (parsed.netloc, parsed.query):
        return url
    # Put together by hand: urlunsplit drops the // of a unix:///path URL.
    return (
        f"{parsed.scheme}://{netloc}{parsed.path}"
        + (f"?{query}" if query else "")
        + (f"#{parsed.fragment}" if parsed.fragment else "")
    )


def parse_value(env: str, raw: str, type_name: Any) -> Any:
    """Turn one raw string into the field's type, or say which variable was wrong."""
    raw = raw.strip()
    if type_name in (bool, "bool"):
        if raw.lower() in TRUE:
            return True
        if raw.lower() in FALSE:
            return False
        raise SettingsError(f"{env}={raw!r}: must be true or false")
    try:
        if type_name in (int, "int"):
            return int(raw)
        if type_name in (float, "float"):
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(raw)
            return value
    except ValueError:
        kind = "a whole number" if type_name in (int, "int") else "a number"
        raise SettingsError(f"{env}={raw!r}: must be {kind}") from None
    return raw


ENV_NAMES: dict[str, str] = {f.name: f.metadata["env"] for f in dataclasses.fields(Settings)}
