"""Every key a line takes, declared once: the settings it may set for itself (bounded where
config/ declares them), and its policy and waiting-room keys, each with its name in the file and
the admin API, the field it sets (``…_sec`` keys set ``…_s`` fields), its bounds, how it is read,
how the admin API shows it and how it is kept. The parser (parse.py), the admin API's view and the
stored form (spec.py) and the bounds table (``key_bounds``) all come from these declarations.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ENV_NAMES, SettingsError
from ..config.line import LineSettings
from ..outbound import OutboundPolicy, url_problem
from .values import Webhook, parse_webhooks, parse_window

MODES = ("open", "paused", "queue_all", "reject", "admission")
FAIRNESS = ("fifo", "fair")
TIER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_MESSAGE_CHARS = 500
MAX_TIERS = 16
MAX_WINDOWS = 100
MIN_TOKEN_SECRET_CHARS = 32

# The settings a line may set for itself (config/line.py declares them); the rest (address, log,
# Redis, edge limits, keys) belong to the process.
LINE_SETTINGS = tuple(f.name for f in dataclasses.fields(LineSettings))
# A line's key (env name without GUEST_, lower case) -> the Settings field.
SETTING_KEYS = {ENV_NAMES[name].removeprefix("GUEST_").lower(): name for name in LINE_SETTINGS}
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
SECRET_KEYS = ("upstream_api_key", "token_secret")


@dataclass(frozen=True, slots=True)
class Reading:
    """Who a table comes from: a tenant's (``outbound`` set: its URLs must be ones the rule allows)
    or the operator's; ``operator_webhooks``: the file's own for this line (always allowed)."""

    outbound: OutboundPolicy | None = None
    operator_webhooks: tuple[Webhook, ...] = ()


Reader = Callable[[Mapping[str, Any], str, Reading], Any]


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Key:
    """One policy or waiting-room key. ``read`` returns its value from a table (absent: the field's
    default, except where the reader says otherwise), or raises SettingsError naming it."""

    name: str  # in the file and the admin API
    field: str  # of LineSpec (policy) or Admission (waiting room)
    read: Reader
    bounds: tuple[float, float] | None = None  # numbers: [low, high]
    show: Callable[[Any], Any] = _same  # as the admin API shows it
    keep: Callable[[Any], Any] | None = None  # as it is stored (None: as shown)

    def kept(self, value: Any) -> Any:
        return (self.keep or self.show)(value)


ABSENT = object()  # what a reader returns for a key the table does not have: the field's default


def number(name: str, field: str, low: float, high: float, *, whole: bool = False) -> Key:
    def read(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
        if name not in table:
            return ABSENT
        value = table[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not low <= value <= high
            or (whole and value != int(value))
        ):
            kind = "a whole number" if whole else "a number"
            raise SettingsError(f"{where}: {name}={value!r}: must be {kind} from {low:g} to {high:g}")
        return int(value) if whole else float(value)

    return Key(name, field, read, bounds=(low, high))


def _mode(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    mode = table.get("mode", "open")
    if mode not in MODES:
        raise SettingsError(f"{where}: mode={mode!r}: must be one of {', '.join(MODES)}")
    if mode != "admission" and (stray := sorted(set(table) & set(ADMISSION_KEYS))):
        raise SettingsError(f'{where}: {stray[0]}: only an admission line (mode = "admission") takes it')
    return mode


def _fairness(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    fairness = table.get("fairness", "fifo")
    if fairness not in FAIRNESS:
        raise SettingsError(f"{where}: fairness={fairness!r}: must be one of {', '.join(FAIRNESS)}")
    return fairness


def _message(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    message = table.get("message", "")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise SettingsError(f"{where}: message: must be a string of at most {MAX_MESSAGE_CHARS} characters")
    return message


def _list(table: Mapping[str, Any], key: str, where: str, most: int) -> list[Any]:
    value = table.get(key, [])
    if not isinstance(value, list) or len(value) > most:
        raise SettingsError(f"{where}: {key}: must be a list of at most {most}")
    return value


def _schedule(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    windows = _list(table, "schedule", where, MAX_WINDOWS)
    return tuple(parse_window(item, f"{where} schedule[{i}]") for i, item in enumerate(windows))


def _public(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    public = table.get("public", True)
    if not isinstance(public, bool):
        raise SettingsError(f"{where}: public={public!r}: must be true or false")
    return public


def _tiers(table: Mapping[str, Any], where: str, reading: Reading) -> tuple[str, ...]:
    tiers = tuple(_list(table, "tiers", where, MAX_TIERS))
    for tier in tiers:
        if not isinstance(tier, str) or not TIER_NAME.fullmatch(tier):
            raise SettingsError(f"{where}: tiers: {tier!r} is not a tier name (letters, digits, '-', '_')")
    if len(set(tiers)) != len(tiers):
        raise SettingsError(f"{where}: tiers: a tier is listed twice")
    return tiers


def _default_tier(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    tiers = _tiers(table, where, reading)
    default_tier = table.get("default_tier", tiers[-1] if tiers else "")
    if tiers and default_tier not in tiers:
        raise SettingsError(f"{where}: default_tier={default_tier!r}: must be one of the tiers {list(tiers)}")
    return default_tier if tiers else ""


def _application(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    application = table.get("application_id")
    if application is not None and (not isinstance(application, str) or len(application) > 64):
        raise SettingsError(f"{where}: application_id={application!r}: must be an application's id")
    return application


def _webhooks(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    value = table.get("webhooks", [])
    return parse_webhooks(value, where, outbound=reading.outbound, operator=reading.operator_webhooks)


def _openai_model(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    alias = table.get("openai_model", "")
    if not isinstance(alias, str) or len(alias) > 128 or (alias and not alias.isprintable()):
        raise SettingsError(f"{where}: openai_model={alias!r}: a model name of at most 128 printable characters")
    return alias


def _redirect(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    redirect = table.get("redirect_url", "")
    if not isinstance(redirect, str) or (redirect and url_problem(redirect)):
        raise SettingsError(f"{where}: redirect_url={redirect!r}: must be an http:// or https:// URL")
    return redirect


def _token_secret(table: Mapping[str, Any], where: str, reading: Reading) -> Any:
    secret = table.get("token_secret", "")
    if not isinstance(secret, str) or (secret and not MIN_TOKEN_SECRET_CHARS <= len(secret) <= 1024):
        raise SettingsError(
            f"{where}: token_secret: a string of {MIN_TOKEN_SECRET_CHARS} to 1024 characters "
            "(it signs this line's tokens with HS256)"
        )
    return secret


# Bounds: what no real line needs to exceed, checked for the file, the admin API and stored lines
# alike, so that nothing a tenant sets grows memory or CPU beyond them.
POLICY: tuple[Key, ...] = (
    Key("mode", "mode", _mode),
    Key("message", "message", _message),
    Key("schedule", "schedule", _schedule, show=lambda windows: [window.as_dict() for window in windows]),
    number("max_predicted_wait_sec", "max_predicted_wait_s", 0, 86_400),
    number("release_per_minute", "release_per_minute", 0, 60_000, whole=True),
    Key("public", "public", _public),
    Key("tiers", "tiers", _tiers, show=list),
    Key("fairness", "fairness", _fairness),
    Key("default_tier", "default_tier", _default_tier),
    number("max_starvation_sec", "max_starvation_s", 0.1, 86_400),
    Key("application_id", "application_id", _application),
    number("purged_at", "purged_at", 0, 1e11),
    Key(
        "webhooks",
        "webhooks",
        _webhooks,
        show=lambda hooks: [hook.as_dict() for hook in hooks],
        keep=lambda hooks: [hook.kept() for hook in hooks],
    ),
    number("alert_queue_size", "alert_queue_size", 0, 1_000_000, whole=True),
    number("alert_wait_p95_sec", "alert_wait_p95_s", 0, 86_400),
    number("alert_failure_rate", "alert_failure_rate", 0, 1),
    number("max_receive_count", "max_receive_count", 1, 100, whole=True),
    Key("openai_model", "openai_model", _openai_model),
)
# An admission line's own keys (mode = "admission"; waitingroom/sessions.py).
ADMISSION: tuple[Key, ...] = (
    number("max_active", "max_active", 1, 10_000, whole=True),
    number("batch_size", "batch_size", 1, 10_000, whole=True),
    number("process_interval_sec", "process_interval_s", 0.0001, 3_600),
    number("session_ttl_sec", "session_ttl_s", 1, 604_800),
    Key("redirect_url", "redirect_url", _redirect),
    number("max_sessions_per_client", "max_sessions_per_client", 1, 1_000, whole=True),
    Key("token_secret", "token_secret", _token_secret, show=lambda secret: "***" if secret else "", keep=_same),
)
ADMISSION_KEYS = tuple(key.name for key in ADMISSION)
POLICY_KEYS = (*(key.name for key in POLICY), *ADMISSION_KEYS)
POLICY_BOUNDS = {key.name: key.bounds for key in (*POLICY, *ADMISSION) if key.bounds is not None}


def read_keys(keys: tuple[Key, ...], table: Mapping[str, Any], where: str, reading: Reading) -> dict[str, Any]:
    """The fields ``keys`` set from ``table`` (those it leaves out keep their defaults)."""
    values = {key.field: key.read(table, where, reading) for key in keys}
    return {field: value for field, value in values.items() if value is not ABSENT}
