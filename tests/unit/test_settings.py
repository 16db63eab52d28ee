"""Settings: typed, bounded, one clear line for a bad one, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import ConfigError, Settings


def from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env(_env_file=None)


def test_defaults_and_environment(monkeypatch, tmp_path: Path):
    settings = from_env(
        monkeypatch,
        PORT="8123",
        DATA_DIR=str(tmp_path),
        HEARTBEAT_S="0.5",
        CORS_ORIGINS="https://a.example, https://b.example",
        DEFAULT_ROOM="Lobby2",
        SHUTDOWN_TIMEOUT="2.5",
        CHAT_REQUIRE_LOGIN="yes",
        SQLITE_SYNCHRONOUS="full",
    )
    assert settings.port == 8123 and settings.data_dir == tmp_path
    assert settings.heartbeat_s == 0.5 and settings.keepalive_s == 15
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.default_room == "lobby2"  # canonical: lower case
    assert settings.shutdown_timeout_s == 2.5
    assert settings.chat_require_login is True
    assert settings.sqlite_synchronous == "FULL"
    assert settings.database == tmp_path / "streaming-message.db"


def test_the_bun_projects_token_variable_and_empty_values(monkeypatch):
    settings = from_env(monkeypatch, TEMP_AVAILABLE_TOKEN="old-name", PORT="")
    assert settings.sse_token == "old-name"
    assert settings.port == 8000  # empty is unset


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"PORT": "abc"}, "PORT: Input should be a valid integer"),
        ({"PORT": "70000"}, "PORT: Input should be less than or equal to 65535"),
        ({"HEARTBEAT_S": "0"}, "HEARTBEAT_S: Input should be greater than 0"),
        ({"SHUTDOWN_TIMEOUT": "soon"}, "SHUTDOWN_TIMEOUT: Input should be a valid number"),
        ({"DEFAULT_ROOM": "my-room"}, "DEFAULT_ROOM: String should match pattern"),
        ({"ACCESS_LOG": "maybe"}, "ACCESS_LOG: Input should be a valid boolean"),
        ({"ADMIN_USERNAME": "a", "ADMIN_PASSWORD": "short"}, "at least 8 characters"),
        ({"ADMIN_PASSWORD": "long enough"}, "ADMIN_PASSWORD is set without ADMIN_USERNAME"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(monkeypatch, env, says):
    with pytest.raises(ConfigError) as raised:
        from_env(monkeypatch, **env)
    message = str(raised.value)
    assert message.startswith("config: ") and says in message and "\n" not in message
    assert raised.value.code == message  # uncaught, it ends the program with this line


def test_secrets_are_never_shown(monkeypatch):
    settings = from_env(
        monkeypatch, SSE_TOKEN="tok-SECRET", LLM_API_KEY="key-SECRET", SECRET_KEY="k" * 40
    )
    assert "SECRET" not in repr(settings) and "k" * 40 not in repr(settings)
    assert set(settings.secrets()) == {"tok-SECRET", "key-SECRET"}
    with pytest.raises(ConfigError) as raised:
        from_env(monkeypatch, SSE_TOKEN="x" * 600)  # too long: named, not shown
    assert "SSE_TOKEN" in str(raised.value) and "x" * 600 not in str(raised.value)
