"""How a setting is declared (:func:`setting`: its variable, default, help and bounds), how a raw
value is read (:func:`parse_value`), and the checks of values more than a number (a Redis URL,
CIDRs)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import field
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import parse_url as parse_redis_url

UPSTREAM_KINDS = ("auto", "http", "openai", "python", "demo", "pull")
HTTP_PARSERS = ("h11", "httptools")  # GUEST_HTTP (web/server.py)


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


def setting(
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
