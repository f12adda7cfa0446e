"""Settings: one frozen dataclass, read from ``GUEST_*`` variables and ``serve`` flags.

Every field carries its environment variable in its metadata (values.py's :func:`setting`); the
CLI derives its flags from the same table, so the two can never drift apart::

    settings = Settings.from_env()                       # GUEST_* from os.environ
    settings = Settings(max_concurrent_requests=1)       # or built in code

The fields are declared in two groups: a line's (line.py) and the process's (process.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .line import LineSettings
from .process import ProcessSettings
from .values import (
    ABOVE_ZERO,
    ADMIN_KEY_MIN_CHARS,
    AT_LEAST_ONE,
    HTTP_PARSERS,
    MAX_TEXT_CHARS,
    MESSAGE_RULES,
    OPENAI_RESERVED_PARAMETERS,
    PYTHON_TARGET,
    TOKEN_SECRET_MIN_CHARS,
    UPSTREAM_KINDS,
    URL_KINDS,
    SettingsError,
    cidrs_problem,
    parse_value,
    redis_url_problem,
    shown_redis_url,
)


@dataclass(frozen=True, kw_only=True)
class Settings(LineSettings, ProcessSettings):
    """Everything guestqueue can be told, with the defaults of docs/design.md."""

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
        if self.http not in HTTP_PARSERS:
            raise SettingsError(f"GUEST_HTTP={self.http!r}: must be one of {', '.join(HTTP_PARSERS)}")
        if self.http == "httptools" and not self.trusted_proxies:
            raise SettingsError(
                "GUEST_HTTP='httptools': only behind a proxy that limits request heads (set GUEST_TRUSTED_PROXIES)"
            )
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


ENV_NAMES: dict[str, str] = {f.name: f.metadata["env"] for f in dataclasses.fields(Settings)}
