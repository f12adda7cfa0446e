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
from typing import Any

from ..config import AT_LEAST_ONE, Settings, SettingsError, parse_value
from ..outbound import OutboundPolicy, mask_url
from .keys import ADMISSION, NOT_FOR_ADMISSION, POLICY, POLICY_BOUNDS, POLICY_KEYS, SETTING_KEYS, Reading, read_keys
from .spec import DEFAULT_LINE, LINE_NAME, Admission, LineSpec, default_line


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
    reading = Reading(outbound, operator.webhooks if operator is not None else ())
    policy = read_keys(POLICY, table, where, reading)
    if policy.get("mode") == "admission":
        policy["admission"] = admission = _admission(table, where, reading)
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
    """Every numeric line key's [low, high], as declared (config/'s settings, POLICY_BOUNDS):
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


def _admission(table: Mapping[str, Any], where: str, reading: Reading) -> Admission:
    clash = sorted(set(table) & set(NOT_FOR_ADMISSION))
    if clash:
        raise SettingsError(
            f"{where}: {clash[0]}: an admission line calls no upstream; its limits are max_active, batch_size "
            "and process_interval_sec"
        )
    return Admission(**read_keys(ADMISSION, table, where, reading))
