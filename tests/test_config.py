"""Settings from env and flags; bad values stop start-up with one clear line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any

import pytest

from guestqueue import Settings, SettingsError, cli
from guestqueue.cli import build_parser, load_settings
from guestqueue.config import shown_redis_url

from .conftest import env_without_guest_vars


def test_defaults_match_design() -> None:
    s = Settings()
    assert (s.host, s.port, s.max_concurrent_requests, s.max_queue_size) == ("127.0.0.1", 8000, 3, 50)
    assert (s.request_timeout_s, s.max_wait_s, s.upstream_interval_s, s.upstream_retries) == (60, 600, 10, 3)
    assert (s.position_update_s, s.ping_s, s.reconnect_grace_s, s.history_size) == (1, 15, 5, 100)
    assert (s.cache_size, s.cache_ttl_s, s.db_path) == (1000, 3600, "guestqueue.db")
    assert (s.max_body_bytes, s.max_query_chars, s.max_per_client, s.shutdown_grace_s) == (65536, 4000, 2, 30)
    assert s.send_timeout_s == 30
    assert (s.redis_url, s.redis_prefix, s.instance_ttl_s, s.workers) == ("", "guestqueue", 5, 1)
    assert s.upstream_allowed_parameter_names == ("temperature", "top_p") and s.upstream_max_hold_s == 120
    assert s.resolved_upstream_kind == "demo"


def test_env_is_read_and_typed() -> None:
    s = Settings.from_env({"GUEST_MAX_QUEUE_SIZE": "7", "GUEST_UPSTREAM_INTERVAL_SEC": "0.5", "GUEST_DB_PATH": ""})
    assert s.max_queue_size == 7 and s.upstream_interval_s == 0.5 and s.db_path == ""


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("GUEST_MAX_QUEUE_SIZE", "abc"),
        ("GUEST_MAX_QUEUE_SIZE", "-1"),
        ("GUEST_MAX_QUEUE_SIZE", "0"),
        ("GUEST_MAX_CONCURRENT_REQUESTS", "1.5"),
        ("GUEST_REQUEST_TIMEOUT_SEC", "nan"),
        ("GUEST_UPSTREAM_INTERVAL_SEC", "-2"),
        ("GUEST_PORT", "70000"),
        ("GUEST_UPSTREAM_KIND", "carrier-pigeon"),
    ],
)
def test_bad_values_name_the_variable_and_the_value(env: str, value: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({env: value})
    assert env in str(error.value) and value in str(error.value)


def test_every_setting_has_a_flag_and_flags_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr,index]
    for f in dataclasses.fields(Settings):
        assert "--" + f.metadata["env"].removeprefix("GUEST_").lower().replace("_", "-") + " VALUE" in help_text
    monkeypatch.setenv("GUEST_MAX_QUEUE_SIZE", "5")
    monkeypatch.setenv("GUEST_PORT", "9001")
    settings = load_settings(parser.parse_args(["serve", "--max-queue-size", "9"]))
    assert settings.max_queue_size == 9 and settings.port == 9001


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Settings(upstream_api_key="sk-very-secret", admin_api_key="admin-secret-of-16+"))
    assert "sk-very-secret" not in text and "admin-secret" not in text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GUEST_MAX_QUEUE_SIZE": "abc"}, "GUEST_MAX_QUEUE_SIZE='abc'"),
        ({"GUEST_MAX_QUEUE_SIZE": "-1"}, "GUEST_MAX_QUEUE_SIZE=-1"),
        ({"GUEST_UPSTREAM_URL": "nosuchmodule:fn"}, "GUEST_UPSTREAM_URL='nosuchmodule:fn'"),
        ({"GUEST_UPSTREAM_URL": "http://127.0.0.1:9/v1/chat/completions"}, "GUEST_UPSTREAM_MODEL=''"),
        ({"GUEST_UPSTREAM_URL": "http://127.0.0.1:9/v1", "GUEST_UPSTREAM_KIND": "openai"}, "GUEST_UPSTREAM_MODEL=''"),
        ({"GUEST_UPSTREAM_ALLOWED_PARAMETERS": "temperature,model"}, "GUEST_UPSTREAM_ALLOWED_PARAMETERS="),
        ({"GUEST_UPSTREAM_MAX_HOLD_SEC": "inf"}, "GUEST_UPSTREAM_MAX_HOLD_SEC='inf'"),
        ({"GUEST_UPSTREAM_URL": "localhost:8080"}, "GUEST_UPSTREAM_URL='localhost:8080'"),
        ({"GUEST_UPSTREAM_URL": "ftp://example.org/chat"}, "GUEST_UPSTREAM_URL='ftp://example.org/chat'"),
        ({"GUEST_ADMIN_API_KEY": "hunter2"}, "GUEST_ADMIN_API_KEY: must be at least 16 characters"),
        ({"GUEST_PUBLIC_STATUS": "maybe"}, "GUEST_PUBLIC_STATUS='maybe'"),
        ({"GUEST_HTTP": "h2"}, "GUEST_HTTP='h2'"),
        ({"GUEST_HTTP": "httptools"}, "GUEST_HTTP='httptools': only behind a proxy"),
    ],
)
def test_cli_stops_with_one_line(
    env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (a process each cost 1.4 s of CPU for its imports, eleven times); the next
    # test runs the real command once.
    for name in [name for name in os.environ if name.startswith("GUEST_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_serve_with_a_bad_setting_exits_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "guestqueue", "serve"],
        env={**env_without_guest_vars(), "GUEST_MAX_QUEUE_SIZE": "abc"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "GUEST_MAX_QUEUE_SIZE='abc'" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("url", "model", "kind"),
    [
        ("https://api.example.org/v1", "m", "openai"),
        ("https://api.example.org/v1/", "m", "openai"),
        ("https://api.example.org/v1/chat/completions", "m", "openai"),
        ("http://127.0.0.1:4000", "gpt-4o-mini", "openai"),  # e.g. a LiteLLM proxy at its root
        ("http://127.0.0.1:9000/chat", "", "http"),
        ("mypkg.flows:answer", "", "python"),
        ("", "", "demo"),
    ],
)
def test_auto_picks_the_upstream_kind(url: str, model: str, kind: str) -> None:
    assert Settings(upstream_url=url, upstream_model=model).resolved_upstream_kind == kind


def test_a_v1_url_without_a_model_stops_start_up_instead_of_failing_the_first_guest() -> None:
    # It used to become an http upstream, and the first guest got "error 404".
    with pytest.raises(SettingsError, match="an openai upstream needs a model name"):
        Settings(upstream_url="https://api.example.org/v1")


@pytest.mark.parametrize(
    "values",
    [
        {"upstream_kind": "http", "upstream_url": "http://127.0.0.1:9000/chat", "upstream_model": "m"},
        {"upstream_url": "mypkg.flows:answer", "upstream_model": "m"},
        {"upstream_model": "m"},
    ],
)
def test_a_model_for_an_upstream_that_takes_none_stops_start_up(values: dict[str, Any]) -> None:
    with pytest.raises(SettingsError, match="GUEST_UPSTREAM_MODEL='m': only an openai upstream takes a model"):
        Settings(**values)


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ({"upstream_url": "localhost:8080"}, "'localhost:8080'"),  # no scheme: read as module:function
        ({"upstream_url": "http:/example.org/chat"}, "'http:/example.org/chat'"),
        ({"upstream_url": "ftp://example.org/chat"}, "'ftp://example.org/chat'"),
        ({"upstream_url": "http://"}, "'http://'"),
        ({"upstream_url": "http:///chat"}, "'http:///chat'"),
        ({"upstream_url": "http://example.org:99999/chat"}, "the port"),
        ({"upstream_url": "example.org/chat", "upstream_kind": "http"}, "'example.org/chat'"),
        ({"upstream_url": "file:///etc/passwd", "upstream_kind": "openai", "upstream_model": "m"}, "'file:///"),
        ({"upstream_url": "mypkg.flows", "upstream_kind": "python"}, "module:function"),
        ({"upstream_url": "https://user:pw@/chat"}, "'https://***@/chat'"),
    ],
)
def test_a_bad_upstream_url_stops_start_up(values: dict[str, Any], shown: str) -> None:
    # It used to start, and every guest's question failed at the first call.
    with pytest.raises(SettingsError) as error:
        Settings(**values)
    message = str(error.value)
    assert message.startswith("GUEST_UPSTREAM_URL") and shown in message and "\n" not in message
    assert ":pw@" not in message, "the URL's password is not printed"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/chat",
        "https://bot.example.org/ask?x=1",
        "HTTP://EXAMPLE.ORG",
        "mypkg.flows:answer",
        "mypkg.flows:Bot.answer",
    ],
)
def test_good_upstream_urls_are_accepted(url: str) -> None:
    Settings(upstream_url=url)


def test_a_short_admin_key_stops_start_up_without_showing_it() -> None:
    with pytest.raises(SettingsError) as error:
        Settings(admin_api_key="fifteen-chars!!")
    assert "GUEST_ADMIN_API_KEY" in str(error.value) and "fifteen" not in str(error.value)
    assert Settings(admin_api_key="sixteen-chars!!!").admin_api_key == "sixteen-chars!!!"
    assert Settings(admin_api_key="ключ-из-16-букв!").admin_api_key  # characters, not bytes


def test_public_status_is_a_boolean_setting() -> None:
    assert Settings().public_status is True
    assert Settings.from_env({"GUEST_PUBLIC_STATUS": "false"}).public_status is False
    assert Settings.from_env({"GUEST_PUBLIC_STATUS": " Yes "}).public_status is True


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:6379/0", "must be a redis://"),
        ("127.0.0.1:6379", "must be a redis://"),
        ("redis://", "needs a host"),
        ("redis://:hunter2@/0", "'redis://:***@/0': a redis:// URL needs a host"),
        ("unix://", "needs the socket's path"),
        ("redis://127.0.0.1:port/0", "the port is not a number"),
        ("redis://:hunter2@127.0.0.1:99999/0", "'redis://:***@127.0.0.1:99999/0': the port"),
        # redis-py would quietly use database 0 (perhaps another deployment's line).
        ("redis://127.0.0.1:6379/one", "the database after the host must be a number"),
        ("redis://127.0.0.1:6379/0?db=x", "Invalid value for 'db'"),
        ("redis://127.0.0.1/0?socket_timeout=soon&password=hunter2", "?socket_timeout=soon&password=***'"),
    ],
)
def test_a_bad_redis_url_stops_start_up_without_its_password(url: str, shown: str) -> None:
    # A bad port used to crash the start-up banner with a traceback; a bad option or database came
    # up only in each worker's start-up, or never (database 0).
    with pytest.raises(SettingsError) as error:
        Settings(redis_url=url)
    message = str(error.value)
    assert message.startswith("GUEST_REDIS_URL=") and shown in message and "\n" not in message, message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://redis",
        "rediss://user:pw@cache.example.org:6380/2",
        "REDIS://[::1]:6379",
        "unix:///run/redis/redis.sock?db=1",
        "redis://h:6379/0?socket_timeout=2.5",
    ],
)
def test_good_redis_urls_are_accepted(url: str) -> None:
    assert Settings(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://app:hunter2@cache:6380/1", "rediss://app:***@cache:6380/1"),
        ("redis://hunter2@cache/0", "redis://***@cache/0"),  # a password without its colon
        ("redis://cache/0?password=hunter2&db=1", "redis://cache/0?password=***&db=1"),  # redis-py reads it too
        ("unix:///run/redis.sock?Password=hunter2", "unix:///run/redis.sock?Password=***"),
        ("unix://:hunter2@/run/redis.sock", "unix://:***@/run/redis.sock"),
    ],
)
def test_a_redis_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert shown_redis_url(url) == shown
    assert "hunter2" not in repr(Settings(redis_url=url))


@pytest.mark.parametrize(
    ("values", "env"),
    [
        ({"redis_prefix": ""}, "GUEST_REDIS_PREFIX"),
        ({"redis_prefix": "my line"}, "GUEST_REDIS_PREFIX"),
        ({"workers": 0}, "GUEST_WORKERS"),
        ({"workers": 2}, "GUEST_REDIS_URL"),  # several processes need the shared line
        ({"instance_ttl_s": 0}, "GUEST_INSTANCE_TTL_SEC"),
    ],
)
def test_bad_instance_settings_stop_start_up(values: dict[str, Any], env: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings(**values)
    assert env in str(error.value) and "\n" not in str(error.value)
