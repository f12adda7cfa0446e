"""linespec/: the lines of GUEST_CONFIG's TOML file, each error naming the file, line and key."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from guestqueue import Settings, SettingsError
from guestqueue.gate import Gate
from guestqueue.linespec import key_bounds, load_lines, parse_line

BASE = Settings(upstream_interval_s=10.0, max_concurrent_requests=3, db_path="")


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "guestqueue.toml"
    path.write_text(text)
    return str(path)


def test_no_file_is_the_guest_line_of_the_settings() -> None:
    lines = load_lines("", BASE)
    assert list(lines) == ["guest"] and lines["guest"].settings is BASE and lines["guest"].mode == "open"


def test_two_lines_each_with_its_own_settings_on_top_of_the_process_settings(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        """
[lines.fast]
upstream_url = "http://fast.example/chat"
upstream_interval_sec = 0
max_concurrent_requests = 8

[lines.slow]
upstream_url = "http://slow.example/v1"
upstream_model = "big"
release_per_minute = 6
tiers = ["paid", "free"]
""",
    )
    lines = load_lines(path, BASE)
    fast, slow = lines["fast"], lines["slow"]
    assert fast.settings.upstream_interval_s == 0.0 and fast.settings.max_concurrent_requests == 8
    assert fast.settings.resolved_upstream_kind == "http"
    assert slow.settings.upstream_interval_s == 10.0, "what a line does not set comes from GUEST_*"
    assert slow.settings.resolved_upstream_kind == "openai" and slow.settings.upstream_model == "big"
    assert slow.release_per_minute == 6 and slow.tiers == ("paid", "free") and slow.default_tier == "free"
    assert slow.tier_rank("paid") == 0 and slow.tier_rank(None) == 1 and slow.tier_rank("gold") == 1


def test_the_process_upstream_key_is_never_sent_to_another_lines_host(tmp_path: Path) -> None:
    base = Settings(upstream_url="http://main.example/chat", upstream_api_key="secret-for-main", db_path="")
    path = _file(
        tmp_path, '[lines.other]\nupstream_url = "http://other.example/chat"\n[lines.same]\nmax_queue_size = 3\n'
    )
    lines = load_lines(path, base)
    assert lines["other"].settings.upstream_api_key == ""
    assert lines["same"].settings.upstream_api_key == "secret-for-main", "same upstream, same key"
    assert "secret" not in repr(lines["same"]) and lines["same"].as_dict()["upstream_api_key"] == "***"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[lines.a]\nupstream_intervall_sec = 1\n", "unknown key 'upstream_intervall_sec'"),
        ("[lines.a]\nmax_queue_size = 0\n", "max_queue_size=0: must be >= 1"),
        ("[lines.a]\nmax_queue_size = 'many'\n", "max_queue_size='many': must be a whole number"),
        ("[lines.a]\nmode = 'closed'\n", "mode='closed': must be one of open, paused, queue_all, reject"),
        ("[lines.a]\nfairness = 'lottery'\n", "fairness='lottery': must be one of fifo, fair"),
        ("[lines.a]\nfairness = 1\n", "fairness=1: must be one of fifo, fair"),
        ("[lines.Big]\n", "line name 'Big'"),
        ("[lines.a]\ntiers = ['paid']\ndefault_tier = 'free'\n", "default_tier='free'"),
        (
            "[lines.a]\n[[lines.a.schedule]]\n"
            "start = 2026-01-01T10:00:00\nend = 2026-01-01T11:00:00\nmode = 'reject'\n",
            "must be a date-time with its offset",
        ),
        (
            "[lines.a]\n[[lines.a.schedule]]\n"
            "start = 2026-01-01T10:00:00Z\nend = 2026-01-01T09:00:00Z\nmode = 'reject'\n",
            "end must be after start",
        ),
        ("[line.a]\n", "unknown table 'line'"),
        ("", "declares no line"),
        ("[lines.a\n", "not valid TOML"),
    ],
)
def test_a_bad_file_says_where_and_what(tmp_path: Path, text: str, message: str) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(SettingsError) as raised:
        load_lines(path, BASE)
    assert message in str(raised.value)
    assert path in str(raised.value) or "GUEST_CONFIG" in str(raised.value)


def test_a_missing_file_names_the_setting() -> None:
    with pytest.raises(SettingsError, match=re.escape("GUEST_CONFIG='/nonexistent/x.toml'")):
        load_lines("/nonexistent/x.toml", BASE)


def test_a_scheduled_window_sets_the_mode_while_it_lasts() -> None:
    now = time.time()
    spec = parse_line(
        "a",
        {
            "mode": "open",
            "schedule": [
                {"start": _iso(now - 60), "end": _iso(now + 60), "mode": "queue_all"},
                {"start": _iso(now + 60), "end": _iso(now + 120), "mode": "reject"},
            ],
        },
        BASE,
        where="test",
    )
    assert spec.mode_at(now) == "queue_all" and spec.mode_at(now + 90) == "reject" and spec.mode_at(now + 200) == "open"
    gate = Gate(spec, clock=lambda: now)
    assert not gate.starts_allowed() and gate.notice()["line_mode"] == "queue_all"
    assert Gate(spec, clock=lambda: now + 200).starts_allowed()


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))


def test_a_line_is_built_again_the_same_from_what_is_kept() -> None:
    """What the admin API keeps (SQLite, Redis) makes the same line again on every instance."""
    base = Settings(token_secret="t" * 32)
    tables = {
        "tiered": {
            "tiers": ["paid", "free"],
            "max_starvation_sec": 30,
            "release_per_minute": 6,
            "public": False,
            "webhooks": [{"url": "https://example.com/h", "events": ["completed"], "secret": "s" * 16}],
            "alert_queue_size": 9,
            "mode": "queue_all",
            "message": "soon",
        },
        "gpu": {"upstream_kind": "pull", "max_receive_count": 5, "upstream_interval_sec": 0},
        "shop": {
            "mode": "admission",
            "max_active": 7,
            "batch_size": 2,
            "process_interval_sec": 0.5,
            "session_ttl_sec": 90,
            "redirect_url": "https://shop.example/checkout",
        },
    }
    for name, table in tables.items():
        spec = parse_line(name, table, base, where="t")
        again = parse_line(name, spec.stored(), base, where="t")
        assert again == spec, name


# -- strangers (issue 20): what a tenant's table may not do ---------------------------------------

TENANT: dict[str, Any] = {"where": "line", "tenant": True}


@pytest.mark.parametrize(
    ("key", "value", "bound"),
    [
        ("max_concurrent_requests", 2**64, "<= 10_000"),
        ("max_concurrent_requests", 1_000_000_000, "<= 10_000"),
        ("position_update_sec", 1e-300, ">= 0.05"),
        ("max_queue_size", 10**12, "<= 1_000_000"),
        ("history_size", 10**9, "<= 10_000"),
        ("cache_size", 10**9, "<= 100_000"),
        ("upstream_retries", 1000, "<= 10"),
        ("max_answer_bytes", 10**12, "<= 67_108_864"),
        ("release_per_minute", 10**12, "from 0 to 60000"),
        ("alert_queue_size", 10**12, "from 0 to 1e+06"),
        ("max_receive_count", 10**9, "from 1 to 100"),
    ],
)
def test_every_numeric_line_key_has_an_upper_and_lower_bound(key: str, value: float, bound: str) -> None:
    """Issue 20 point 3: one admin call could grow the process to 23 GB (a task per slot) or hold a
    core (a tick every 1e-300 s). The same bounds hold for the file, the API and stored lines."""
    for tenant in (False, True):
        with pytest.raises(SettingsError, match=re.escape(key)) as caught:
            parse_line("x", {key: value}, BASE, where="line", tenant=tenant)
        assert bound in str(caught.value), str(caught.value)


def test_admission_keys_are_bounded_too() -> None:
    base = Settings(token_secret="t" * 32, db_path="")
    for key, value in (
        ("max_active", 10**9),
        ("batch_size", 10**9),
        ("process_interval_sec", 1e-300),
        ("session_ttl_sec", 1e12),
        ("max_sessions_per_client", 10**9),
    ):
        with pytest.raises(SettingsError, match=re.escape(key)):
            parse_line("shop", {"mode": "admission", key: value}, base, where="line")
    with pytest.raises(SettingsError, match="tiers: must be a list of at most 16"):
        parse_line("x", {"tiers": [f"t{n}" for n in range(17)]}, BASE, where="line")


def test_a_python_upstream_is_the_operators_only() -> None:
    """Issue 20 point 1: through the admin API, ``module:function`` imported any module."""
    for table in ({"upstream_url": "this:nothing"}, {"upstream_url": "os:system", "upstream_kind": "python"}):
        with pytest.raises(SettingsError, match=r"python upstream .* only the operator declares one"):
            parse_line("x", table, BASE, **TENANT)
    assert (
        parse_line("x", {"upstream_url": "this:nothing"}, BASE, where="file").settings.upstream_url == "this:nothing"
    )  # the file's own is the operator's (it is imported when the line opens)
    operator = parse_line("bot", {"upstream_url": "mybot:answer"}, BASE, where="file")
    kept = parse_line("bot", {**operator.stored(), "mode": "paused"}, BASE, **TENANT, operator=operator)
    assert kept.mode == "paused", "a tenant may pause the operator's python line without naming the code"


def test_forwarding_a_callers_system_turns_is_the_operators_only() -> None:
    with pytest.raises(SettingsError, match="upstream_messages='all'"):
        parse_line("x", {"upstream_messages": "all"}, BASE, **TENANT)
    assert parse_line("x", {"upstream_messages": "all"}, BASE, where="file").settings.upstream_messages == "all"
    with pytest.raises(SettingsError, match="upstream_messages"):
        parse_line("x", {"upstream_messages": "some"}, BASE, where="file")


@pytest.mark.parametrize("url", ["http://up.example/\r\nX-Injected: 1", "http://up.example/a b", "ftp://x/"])
def test_a_url_with_control_characters_is_refused_naming_the_key(url: str) -> None:
    with pytest.raises(SettingsError, match="upstream_url"):
        parse_line("x", {"upstream_url": url}, BASE, **TENANT)
    hook = [{"url": url, "events": ["completed"], "secret": "s" * 16}]
    with pytest.raises(SettingsError, match=r"webhooks\[0\]: url="):
        parse_line("x", {"webhooks": hook}, BASE, **TENANT)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_a_tenants_url_may_not_name_an_internal_address(url: str) -> None:
    """Issue 20 point 5, as far as the URL alone tells (the connect is checked again: test_outbound.py)."""
    with pytest.raises(SettingsError, match="GUEST_OUTBOUND_ALLOW"):
        parse_line("x", {"upstream_url": url}, BASE, **TENANT)
    hook = [{"url": url, "events": ["completed"], "secret": "s" * 16}]
    with pytest.raises(SettingsError, match="GUEST_OUTBOUND_ALLOW"):
        parse_line("x", {"webhooks": hook}, BASE, **TENANT)
    allowed = Settings(db_path="", outbound_allow="0.0.0.0/0,::/0")
    assert not parse_line("x", {"upstream_url": url}, allowed, **TENANT).upstream_trusted
    assert parse_line("x", {"upstream_url": url}, BASE, where="file").upstream_trusted


def test_secrets_inside_urls_are_masked_like_the_key() -> None:
    """Issue 20 point 7: READ members saw ``user:pass@``, ``?key=`` and Slack hook paths."""
    spec = parse_line(
        "x",
        {
            "upstream_url": "https://bot:hunter2@up.example/chat?key=s3cret&model=m",
            "upstream_api_key": "k" * 20,
            "webhooks": [
                {"url": "https://hooks.slack.com/services/T0/B0/XyZsecret", "events": ["failed"], "secret": "s" * 16}
            ],
        },
        BASE,
        where="file",
    )
    shown = str(spec.as_dict())
    for secret in ("hunter2", "s3cret", "XyZsecret", "k" * 20, "s" * 16):
        assert secret not in shown
    assert spec.as_dict()["upstream_url"] == "https://bot:***@up.example/chat?key=***&model=***"
    assert "hunter2" in spec.stored()["upstream_url"], "what is kept to build the line again keeps it"


def test_a_waiting_room_may_have_its_own_token_secret_shown_masked() -> None:
    spec = parse_line("shop", {"mode": "admission", "token_secret": "z" * 40}, Settings(db_path=""), where="l")
    assert spec.admission is not None and spec.admission.token_secret == "z" * 40
    assert spec.as_dict()["token_secret"] == "***" and spec.stored()["token_secret"] == "z" * 40
    with pytest.raises(SettingsError, match="token_secret"):
        parse_line("shop", {"mode": "admission", "token_secret": "short"}, Settings(db_path=""), where="l")


def test_the_bounds_table_of_the_design_is_what_the_code_declares() -> None:
    """docs/design.md states every numeric line key's bounds; they are declared once, in the code."""
    text = (Path(__file__).parent.parent / "docs" / "design.md").read_text()
    section = text.split("### Bounds of the line keys", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        key, low, high = (cell.strip().strip("`").replace(",", "") for cell in row.strip("|").split("|")[:3])
        documented[key] = (float(low.removeprefix("> ")), float(high))
    assert documented == {key: (float(low), float(high or 0)) for key, (low, high) in key_bounds().items()}
