"""linespec.py: the lines of GUEST_CONFIG's TOML file, each error naming the file, line and key."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from guestqueue import Settings, SettingsError
from guestqueue.gate import Gate
from guestqueue.linespec import load_lines, parse_line

BASE = Settings(upstream_interval_s=10.0, max_concurrent_requests=3, db_path="")


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "guestqueue.toml"
    path.write_text(text)
    return str(path)


def test_no_file_is_the_guest_line_of_the_settings() -> None:
    lines = load_lines("", BASE)
    assert list(lines) == ["guest"] and lines["guest"].settings is BASE and lines["guest"].mode == "open"


def test_two_lines_each_with_its_own_settings_on_top_of_the_process_settings(tmp_path: Path) -> None:
    path = _file(tmp_path, """
[lines.fast]
upstream_url = "http://fast.example/chat"
upstream_interval_sec = 0
max_concurrent_requests = 8

[lines.slow]
upstream_url = "http://slow.example/v1"
upstream_model = "big"
release_per_minute = 6
tiers = ["paid", "free"]
""")
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
    path = _file(tmp_path, '[lines.other]\nupstream_url = "http://other.example/chat"\n'
                           '[lines.same]\nmax_queue_size = 3\n')
    lines = load_lines(path, base)
    assert lines["other"].settings.upstream_api_key == ""
    assert lines["same"].settings.upstream_api_key == "secret-for-main", "same upstream, same key"
    assert "secret" not in repr(lines["same"]) and lines["same"].as_dict()["upstream_api_key"] == "***"


@pytest.mark.parametrize(("text", "message"), [
    ("[lines.a]\nupstream_intervall_sec = 1\n", "unknown key 'upstream_intervall_sec'"),
    ("[lines.a]\nmax_queue_size = 0\n", "max_queue_size=0: must be >= 1"),
    ("[lines.a]\nmax_queue_size = 'many'\n", "max_queue_size='many': must be a whole number"),
    ("[lines.a]\nmode = 'closed'\n", "mode='closed': must be one of open, paused, queue_all, reject"),
    ("[lines.Big]\n", "line name 'Big'"),
    ("[lines.a]\ntiers = ['paid']\ndefault_tier = 'free'\n", "default_tier='free'"),
    ("[lines.a]\n[[lines.a.schedule]]\nstart = 2026-01-01T10:00:00\nend = 2026-01-01T11:00:00\nmode = 'reject'\n",
     "must be a date-time with its offset"),
    ("[lines.a]\n[[lines.a.schedule]]\nstart = 2026-01-01T10:00:00Z\nend = 2026-01-01T09:00:00Z\nmode = 'reject'\n",
     "end must be after start"),
    ("[line.a]\n", "unknown table 'line'"),
    ("", "declares no line"),
    ("[lines.a\n", "not valid TOML"),
])
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
    spec = parse_line("a", {"mode": "open", "schedule": [
        {"start": _iso(now - 60), "end": _iso(now + 60), "mode": "queue_all"},
        {"start": _iso(now + 60), "end": _iso(now + 120), "mode": "reject"},
    ]}, BASE, where="test")
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
        "tiered": {"tiers": ["paid", "free"], "max_starvation_sec": 30, "release_per_minute": 6, "public": False,
                   "webhooks": [{"url": "https://example.com/h", "events": ["completed"], "secret": "s" * 16}],
                   "alert_queue_size": 9, "mode": "queue_all", "message": "soon"},
        "gpu": {"upstream_kind": "pull", "max_receive_count": 5, "upstream_interval_sec": 0},
        "shop": {"mode": "admission", "max_active": 7, "batch_size": 2, "process_interval_sec": 0.5,
                 "session_ttl_sec": 90, "redirect_url": "https://shop.example/checkout"},
    }
    for name, table in tables.items():
        spec = parse_line(name, table, base, where="t")
        again = parse_line(name, spec.stored(), base, where="t")
        assert again == spec, name
