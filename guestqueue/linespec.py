"""Named lines: what each line is (its upstream, limits, pacing, mode, tiers).

Lines are declared in a TOML file (``GUEST_CONFIG=guestqueue.toml``, read with
``tomllib``), one ``[lines.NAME]`` table each, and/or created through the admin
API, whose JSON body takes the same keys::

    [lines.fast]
    upstream_url = "http://fast-model:8080/chat"
    upstream_interval_sec = 0
    max_concurrent_requests = 8

    [lines.slow]
    upstream_url = "http://slow-model:8080/chat"
    release_per_minute = 6
    mode = "paused"
    [[lines.slow.schedule]]
    start = 2026-12-01T02:00:00Z
    end = 2026-12-01T03:00:00Z
    mode = "reject"

A setting's key is its environment name without ``GUEST_``, in lower case
(``upstream_interval_sec``); what a line does not set comes from the
``GUEST_*`` settings. With no file there is one line, ``guest``, built from the
``GUEST_*`` settings exactly as before lines existed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .config import AT_LEAST_ONE, ENV_NAMES, Settings, SettingsError, parse_value
from .outbound import OutboundPolicy, mask_url, url_problem

DEFAULT_LINE = "guest"
MODES = ("open", "paused", "queue_all", "reject", "admission")
WINDOW_MODES = ("open", "paused", "queue_all", "reject")
LINE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
TIER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_MESSAGE_CHARS = 500
DEFAULT_STARVATION_S = 120.0

# The settings a line may set for itself; the rest (address, log, Redis, edge limits, keys)
# belong to the process.
LINE_SETTINGS = (
    "upstream_url",
    "upstream_kind",
    "upstream_model",
    "upstream_api_key",
    "upstream_interval_s",
    "upstream_retries",
    "upstream_allowed_parameters",
    "upstream_max_hold_s",
    "max_concurrent_requests",
    "max_queue_size",
    "request_timeout_s",
    "max_wait_s",
    "cache_size",
    "cache_ttl_s",
    "max_per_client",
    "max_query_chars",
    "history_size",
    "position_update_s",
    "reconnect_grace_s",
    "upstream_messages",
    "upstream_system_prompt",
    "max_answer_bytes",
)
# A line's key (env name without GUEST_, lower case) -> the Settings field.
SETTING_KEYS = {ENV_NAMES[name].removeprefix("GUEST_").lower(): name for name in LINE_SETTINGS}
# An admission line's own keys (mode = "admission"; waitingroom/sessions.py).
ADMISSION_KEYS = (
    "max_active",
    "batch_size",
    "process_interval_sec",
    "session_ttl_sec",
    "redirect_url",
    "max_sessions_per_client",
    "token_secret",
)
# What an admission line sets through its own keys, or has no use for.
NOT_FOR_ADMISSION = (
    "upstream_url",
    "upstream_kind",
    "upstream_model",
    "upstream_api_key",
    "upstream_interval_sec",
    "upstream_retries",
    "upstream_allowed_parameters",
    "max_concurrent_requests",
    "cache_size",
    "upstream_messages",
    "upstream_system_prompt",
    "max_answer_bytes",
)
POLICY_KEYS = (
    "mode",
    "message",
    "schedule",
    "max_predicted_wait_sec",
    "release_per_minute",
    "public",
    "tiers",
    "default_tier",
    "max_starvation_sec",
    "application_id",
    "purged_at",
    "webhooks",
    "alert_queue_size",
    "alert_wait_p95_sec",
    "alert_failure_rate",
    "max_receive_count",
    "openai_model",
    *ADMISSION_KEYS,
)
SECRET_KEYS = ("upstream_api_key", "token_secret")
# Bounds of the policy keys, [low, high] (the settings' keys are bounded where config.py declares
# them): what no real line needs to exceed, checked here for the file, the admin API and stored
# lines alike, so that nothing a tenant sets grows memory or CPU beyond them.
POLICY_BOUNDS: dict[str, tuple[float, float]] = {
    "max_predicted_wait_sec": (0, 86_400),
    "release_per_minute": (0, 60_000),
    "max_starvation_sec": (0.1, 86_400),
    "alert_queue_size": (0, 1_000_000),
    "alert_wait_p95_sec": (0, 86_400),
    "alert_failure_rate": (0, 1),
    "max_receive_count": (1, 100),
    "purged_at": (0, 1e11),
    "max_active": (1, 10_000),
    "batch_size": (1, 10_000),
    "process_interval_sec": (0.0001, 3_600),
    "session_ttl_sec": (1, 604_800),
    "max_sessions_per_client": (1, 1_000),
}
WHOLE_NUMBERS = (
    "release_per_minute",
    "alert_queue_size",
    "max_receive_count",
    "max_active",
    "batch_size",
    "max_sessions_per_client",
)
MAX_TIERS = 16
MAX_WINDOWS = 100
MAX_WEBHOOKS = 20  # per line, whoever declares it; an application's own quota may be lower (tenancy/catalog.py)
MIN_TOKEN_SECRET_CHARS = 32


WEBHOOK_EVENTS = ("admitted", "completed", "failed", "timeout", "cancelled", "line_threshold", "upstream_degraded")


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    events: tuple[str, ...]
    secret: str

    def as_dict(self) -> dict[str, Any]:
        """As the admin API shows it: never the secret, nor one inside the URL (a Slack hook's path)."""
        return {"url": mask_url(self.url), "events": list(self.events), "secret": "***"}


def parse_webhooks(
    value: Any, where: str, *, outbound: OutboundPolicy | None = None, operator: Iterable[Webhook] = ()
) -> tuple[Webhook, ...]:
    """The ``webhooks`` of a line's table (webhooks.py sends them). With ``outbound`` (a tenant's
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
        # (webhooks.py sends the operator's own URLs, the file's, with the unguarded client)
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
        return {
            "max_active": self.max_active,
            "batch_size": self.batch_size,
            "process_interval_sec": self.process_interval_s,
            "session_ttl_sec": self.session_ttl_s,
            "redirect_url": self.redirect_url,
            "max_sessions_per_client": self.max_sessions_per_client,
            "token_secret": self.token_secret if secrets else ("***" if self.token_secret else ""),
        }


@dataclass(frozen=True, slots=True)
class Window:
    """A scheduled mode: from ``start`` (inclusive) to ``end`` (exclusive), Unix seconds."""

    start: float
    end: float
    mode: str

    def as_dict(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "end": _iso(self.end), "mode": self.mode}


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
    openai_model: str = ""  # another name OpenAI clients may ask this line by (web/openai.py)
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
        out.update(
            {
                "upstream_kind": self.settings.resolved_upstream_kind,
                "mode": self.mode,
                "message": self.message,
                "schedule": [window.as_dict() for window in self.schedule],
                "max_predicted_wait_sec": self.max_predicted_wait_s,
                "release_per_minute": self.release_per_minute,
                "public": self.public,
                "tiers": list(self.tiers),
                "default_tier": self.default_tier,
                "max_starvation_sec": self.max_starvation_s,
                "application_id": self.application_id,
                "purged_at": self.purged_at,
                "webhooks": [hook.as_dict() for hook in self.webhooks],
                "alert_queue_size": self.alert_queue_size,
                "alert_wait_p95_sec": self.alert_wait_p95_s,
                "alert_failure_rate": self.alert_failure_rate,
                "max_receive_count": self.max_receive_count,
                "openai_model": self.openai_model,
            }
        )
        if self.admission is not None:
            out.update(self.admission.as_dict())
        return out

    def stored(self) -> dict[str, Any]:
        """What is kept (SQLite, Redis) to build the line again: the keys as given, secrets included."""
        out: dict[str, Any] = dict(self.overrides)
        out.update(
            {
                "mode": self.mode,
                "message": self.message,
                "schedule": [w.as_dict() for w in self.schedule],
                "max_predicted_wait_sec": self.max_predicted_wait_s,
                "release_per_minute": self.release_per_minute,
                "public": self.public,
                "tiers": list(self.tiers),
                "default_tier": self.default_tier,
                "max_starvation_sec": self.max_starvation_s,
                "application_id": self.application_id,
                "purged_at": self.purged_at,
                "webhooks": [{"url": h.url, "events": list(h.events), "secret": h.secret} for h in self.webhooks],
                "alert_queue_size": self.alert_queue_size,
                "alert_wait_p95_sec": self.alert_wait_p95_s,
                "alert_failure_rate": self.alert_failure_rate,
                "max_receive_count": self.max_receive_count,
                "openai_model": self.openai_model,
            }
        )
        if self.admission is not None:
            out.update(self.admission.as_dict(secrets=True))
        return out


def default_line(settings: Settings) -> LineSpec:
    return LineSpec(name=DEFAULT_LINE, settings=settings)


def parse_line(
    name: str,
    table: Mapping[str, Any],
    base: Settings,
    *,
    where: str,
    tenant: bool = False,
    operator: LineSpec | None = None,
) -> LineSpec:
    """A line from its table (TOML) or JSON body; errors name ``where``, the key and the value.

    ``tenant``: the table came through the admin API (or was kept from it), not from the operator's
    file or ``GUEST_*``. Then what runs code in the server or sends the caller's system turns
    (``upstream_kind = "python"``, ``upstream_messages = "all"``) is refused unless it is the
    ``operator``'s own value for this line (the file's line of the same name), and its URLs must be
    ones the outbound rule lets us reach (outbound.py)."""
    if not isinstance(name, str) or not LINE_NAME.fullmatch(name):
        raise SettingsError(
            f"{where}: line name {name!r}: use 1-64 lower-case letters, digits, '-' or '_' (starting with a "
            "letter or digit)"
        )
    if not isinstance(table, Mapping):
        raise SettingsError(f"{where}: must be a table of settings")
    unknown = sorted(set(table) - set(SETTING_KEYS) - set(POLICY_KEYS))
    if unknown:
        raise SettingsError(
            f"{where}: unknown key {unknown[0]!r}; a line takes {', '.join(sorted(SETTING_KEYS))}, "
            f"{', '.join(POLICY_KEYS)}"
        )
    overrides = {key: value for key, value in table.items() if key in SETTING_KEYS}
    values = {SETTING_KEYS[key]: _setting_value(key, value, where) for key, value in overrides.items()}
    if "upstream_url" in values:
        # The process's kind, model and key were for the process's URL: the key, above all, is
        # never sent to another line's host.
        for inherited in ("upstream_kind", "upstream_model", "upstream_api_key"):
            values.setdefault(inherited, "auto" if inherited == "upstream_kind" else "")
    if values.get("upstream_kind") == "pull":
        # Its workers come to it: the process's upstream address, model and key are not its.
        for inherited in ("upstream_url", "upstream_model", "upstream_api_key"):
            values.setdefault(inherited, "")
    try:
        settings = dataclasses.replace(base, **values)
    except SettingsError as exc:
        raise SettingsError(f"{where}: {_as_key(str(exc))}") from None
    trusted = (
        not tenant
        or "upstream_url" not in overrides
        or (operator is not None and operator.settings.upstream_url == settings.upstream_url)
    )
    outbound = OutboundPolicy.from_settings(base) if tenant else None
    if outbound is not None:
        _check_tenant_settings(settings, operator, None if trusted else outbound, where)
    policy = _policy(table, where, outbound, operator)
    if policy["mode"] == "admission":
        policy["admission"] = admission = _admission(table, where)
        if not (base.token_secret or base.token_key_file or admission.token_secret):
            raise SettingsError(
                f'{where}: mode="admission" needs a token_secret of its own, GUEST_TOKEN_SECRET (at least 32 '
                "characters) or GUEST_TOKEN_KEY_FILE to sign its guests' tokens"
            )
        # The line's limits are the waiting room's: sessions hold its slots, and the pacing spreads
        # each batch over the interval. No answer is shared, so nothing is cached.
        settings = dataclasses.replace(
            settings,
            max_concurrent_requests=admission.max_active,
            upstream_interval_s=admission.process_interval_s / admission.batch_size,
            cache_size=0,
            upstream_retries=0,
            request_timeout_s=max(settings.request_timeout_s, 60.0),
        )
    return LineSpec(name=name, settings=settings, overrides=overrides, upstream_trusted=trusted, **policy)


def key_bounds() -> dict[str, tuple[float, float | None]]:
    """Every numeric line key's [low, high], as declared (config.py's settings, POLICY_BOUNDS):
    what docs/design.md's table of bounds states (tests/test_linespec.py compares them)."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    out: dict[str, tuple[float, float | None]] = {}
    for key, name in SETTING_KEYS.items():
        metadata = fields[name].metadata
        if fields[name].type in ("int", "float", int, float):
            out[key] = (1 if name in AT_LEAST_ONE else metadata["minimum"], metadata["maximum"])
    return {**out, **POLICY_BOUNDS}


def _check_tenant_settings(
    settings: Settings, operator: LineSpec | None, outbound: OutboundPolicy | None, where: str
) -> None:
    """What only the operator may set (the file, ``GUEST_*``), refused in a tenant's table; with
    ``outbound``, the upstream URL is the tenant's and must be one the rule lets us reach."""
    mine = operator.settings if operator is not None else None
    operators_code = (
        mine is not None and mine.resolved_upstream_kind == "python" and mine.upstream_url == settings.upstream_url
    )
    if settings.resolved_upstream_kind == "python" and not operators_code:
        raise SettingsError(
            f"{where}: upstream_url={settings.upstream_url!r}: a python upstream (module:function) runs code inside "
            "the server: only the operator declares one (GUEST_CONFIG or GUEST_UPSTREAM_URL), never the admin API"
        )
    if settings.upstream_messages == "all" and not (mine is not None and mine.upstream_messages == "all"):
        raise SettingsError(
            f"{where}: upstream_messages='all': forwarding a caller's own system turns is the operator's choice "
            "(GUEST_CONFIG or GUEST_UPSTREAM_MESSAGES), never the admin API's"
        )
    if outbound is not None and (refused := outbound.refuses_url(settings.upstream_url)):
        raise SettingsError(f"{where}: upstream_url={mask_url(settings.upstream_url)!r}: {refused}")


def load_lines(path: str, base: Settings) -> dict[str, LineSpec]:
    """The lines of ``GUEST_CONFIG``'s file; without a file, the one line ``guest``."""
    if not path:
        return {DEFAULT_LINE: default_line(base)}
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"GUEST_CONFIG={path!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"GUEST_CONFIG={path!r}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"lines"})
    if unknown:
        raise SettingsError(f"{path}: unknown table {unknown[0]!r}; lines go in [lines.NAME] tables")
    tables = document.get("lines")
    if not isinstance(tables, dict) or not tables:
        raise SettingsError(f"{path}: declares no line; add one [lines.NAME] table per line")
    specs = {name: parse_line(name, table, base, where=f"{path} [lines.{name}]") for name, table in tables.items()}
    check_models(specs.values(), where=path)
    return specs


def check_models(specs: Iterable[LineSpec], *, where: str) -> None:
    """Every model name OpenAI clients may ask (a line's name or its ``openai_model``) names one line."""
    seen: dict[str, str] = {}
    for spec in specs:
        for model in {spec.name, spec.openai_model} - {""}:
            if seen.setdefault(model, spec.name) != spec.name:
                raise SettingsError(
                    f"{where}: openai_model={model!r} names both line {seen[model]!r} and line {spec.name!r}"
                )


def _setting_value(key: str, value: Any, where: str) -> Any:
    name = SETTING_KEYS[key]
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    if isinstance(value, bool) and kind not in (bool, "bool"):
        raise SettingsError(f"{where}: {key}={value!r}: must be a {'whole ' if kind in (int, 'int') else ''}number")
    if isinstance(value, (int, float)) and kind in (float, "float") and math.isfinite(value):
        return float(value)
    if isinstance(value, int) and kind in (int, "int"):
        return value
    if isinstance(value, str) and kind in (str, "str"):
        return value
    if isinstance(value, (str, int, float)):
        try:
            return parse_value(key, str(value), kind)
        except SettingsError as exc:
            raise SettingsError(f"{where}: {exc}") from None
    raise SettingsError(f"{where}: {key}={value!r}: must be a {kind if isinstance(kind, str) else kind.__name__}")


def _as_key(message: str) -> str:
    """A Settings error names GUEST_UPSTREAM_URL; in a line's table the key is upstream_url."""
    return re.sub(r"GUEST_([A-Z_]+)", lambda m: m.group(1).lower(), message)


def _policy(
    table: Mapping[str, Any], where: str, outbound: OutboundPolicy | None = None, operator: LineSpec | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    mode = table.get("mode", "open")
    if mode not in MODES:
        raise SettingsError(f"{where}: mode={mode!r}: must be one of {', '.join(MODES)}")
    out["mode"] = mode
    if mode != "admission" and (stray := sorted(set(table) & set(ADMISSION_KEYS))):
        raise SettingsError(f'{where}: {stray[0]}: only an admission line (mode = "admission") takes it')
    message = table.get("message", "")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise SettingsError(f"{where}: message: must be a string of at most {MAX_MESSAGE_CHARS} characters")
    out["message"] = message
    windows = _list(table, "schedule", where, MAX_WINDOWS)
    out["schedule"] = tuple(_window(item, f"{where} schedule[{i}]") for i, item in enumerate(windows))
    out["max_predicted_wait_s"] = _number(table, "max_predicted_wait_sec", where, 0.0)
    out["release_per_minute"] = int(_number(table, "release_per_minute", where, 0))
    public = table.get("public", True)
    if not isinstance(public, bool):
        raise SettingsError(f"{where}: public={public!r}: must be true or false")
    out["public"] = public
    tiers = tuple(_list(table, "tiers", where, MAX_TIERS))
    for tier in tiers:
        if not isinstance(tier, str) or not TIER_NAME.fullmatch(tier):
            raise SettingsError(f"{where}: tiers: {tier!r} is not a tier name (letters, digits, '-', '_')")
    if len(set(tiers)) != len(tiers):
        raise SettingsError(f"{where}: tiers: a tier is listed twice")
    out["tiers"] = tiers
    default_tier = table.get("default_tier", tiers[-1] if tiers else "")
    if tiers and default_tier not in tiers:
        raise SettingsError(f"{where}: default_tier={default_tier!r}: must be one of the tiers {list(tiers)}")
    out["default_tier"] = default_tier if tiers else ""
    out["max_starvation_s"] = _number(table, "max_starvation_sec", where, DEFAULT_STARVATION_S)
    application = table.get("application_id")
    if application is not None and (not isinstance(application, str) or len(application) > 64):
        raise SettingsError(f"{where}: application_id={application!r}: must be an application's id")
    out["application_id"] = application
    out["purged_at"] = _number(table, "purged_at", where, 0.0)
    out["webhooks"] = parse_webhooks(
        table.get("webhooks", []), where, outbound=outbound, operator=operator.webhooks if operator is not None else ()
    )
    out["alert_queue_size"] = int(_number(table, "alert_queue_size", where, 0))
    out["alert_wait_p95_s"] = _number(table, "alert_wait_p95_sec", where, 0.0)
    out["alert_failure_rate"] = _number(table, "alert_failure_rate", where, 0.0)
    out["max_receive_count"] = int(_number(table, "max_receive_count", where, 3))
    alias = table.get("openai_model", "")
    if not isinstance(alias, str) or len(alias) > 128 or (alias and not alias.isprintable()):
        raise SettingsError(f"{where}: openai_model={alias!r}: a model name of at most 128 printable characters")
    out["openai_model"] = alias
    return out


def _admission(table: Mapping[str, Any], where: str) -> Admission:
    clash = sorted(set(table) & set(NOT_FOR_ADMISSION))
    if clash:
        raise SettingsError(
            f"{where}: {clash[0]}: an admission line calls no upstream; its limits are max_active, batch_size "
            "and process_interval_sec"
        )
    default = Admission()
    values: dict[str, Any] = {}
    for key, name in (
        ("max_active", "max_active"),
        ("batch_size", "batch_size"),
        ("process_interval_sec", "process_interval_s"),
        ("session_ttl_sec", "session_ttl_s"),
        ("max_sessions_per_client", "max_sessions_per_client"),
    ):
        value = _number(table, key, where, getattr(default, name))
        values[name] = int(value) if key in WHOLE_NUMBERS else value
    redirect = table.get("redirect_url", "")
    if not isinstance(redirect, str) or (redirect and url_problem(redirect)):
        raise SettingsError(f"{where}: redirect_url={redirect!r}: must be an http:// or https:// URL")
    secret = table.get("token_secret", "")
    if not isinstance(secret, str) or (secret and not MIN_TOKEN_SECRET_CHARS <= len(secret) <= 1024):
        raise SettingsError(
            f"{where}: token_secret: a string of {MIN_TOKEN_SECRET_CHARS} to 1024 characters "
            "(it signs this line's tokens with HS256)"
        )
    return Admission(redirect_url=redirect, token_secret=secret, **values)


def _list(table: Mapping[str, Any], key: str, where: str, most: int) -> Iterable[Any]:
    value = table.get(key, [])
    if not isinstance(value, list) or len(value) > most:
        raise SettingsError(f"{where}: {key}: must be a list of at most {most}")
    return value


def _number(table: Mapping[str, Any], key: str, where: str, default: float) -> float:
    """A policy key's number, within its bounds (POLICY_BOUNDS)."""
    low, high = POLICY_BOUNDS[key]
    value = table.get(key, default)
    whole = key in WHOLE_NUMBERS
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
        or (whole and value != int(value))
    ):
        kind = "a whole number" if whole else "a number"
        raise SettingsError(f"{where}: {key}={value!r}: must be {kind} from {low:g} to {high:g}")
    return int(value) if whole else float(value)


def _window(item: Any, where: str) -> Window:
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
