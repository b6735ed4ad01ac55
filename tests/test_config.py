"""Settings: defaults, TOML, environment overrides, validation, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.config import ConfigError, Settings, load_settings, mask_url, masked

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_parses_to_the_defaults() -> None:
    loaded = load_settings(ROOT / "config.example.toml", environ={})
    assert loaded == Settings()


def test_every_setting_is_documented_in_the_example() -> None:
    text = (ROOT / "config.example.toml").read_text()
    for section, model in Settings().model_dump().items():
        assert f"[{section}]" in text
        for key in model:
            assert f"{key} =" in text, f"{section}.{key} missing from config.example.toml"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[engine]\npreset = "tiny"\ndevices = ["cpu"]\n')
    env = {
        "PULID_BOT__ENGINE__PRESET": "flux-dev",
        "PULID_BOT__ENGINE__DEVICES": '["cuda:0", "cuda:1"]',
        "PULID_BOT__LIMITS__MAX_BATCH_PROMPTS": "4",
        "PULID_BOT__DISCORD__TOKEN": "abc.def",
    }
    s = load_settings(cfg, environ=env)
    assert s.engine.preset == "flux-dev"
    assert s.engine.devices == ["cuda:0", "cuda:1"]
    assert s.limits.max_batch_prompts == 4
    assert s.discord.token is not None and s.discord.token.get_secret_value() == "abc.def"


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[limits]\njobs_per_hour = 7\n")
    assert load_settings(environ={"PULID_BOT_CONFIG": str(cfg)}).limits.jobs_per_hour == 7


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ('[engine]\npreset = "huge"\n', {}, "setting engine.preset = 'huge'"),
        ("[limits]\nmax_batch_prompts = 0\n", {}, "setting limits.max_batch_prompts = 0"),
        ("[nosuch]\nx = 1\n", {}, "setting nosuch"),
        ("[engine]\nbogus = 1\n", {}, "setting engine.bogus = 1"),
        ("[engine\n", {}, "is not valid TOML"),
        ("", {"PULID_BOT__QUEUE__MAX_ATTEMPTS": "many"}, "setting queue.max_attempts = 'many'"),
        ("", {"PULID_BOT__QUEUE": "1"}, "expected PULID_BOT__SECTION__KEY"),
    ],
)
def test_bad_settings_name_key_and_value(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ=env)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_secrets_are_masked() -> None:
    env = {
        "PULID_BOT__DISCORD__TOKEN": "discord-secret-token",
        "PULID_BOT__TELEGRAM__TOKEN": "123:telegram-secret",
        "PULID_BOT__TELEGRAM__WEBHOOK_SECRET": "hook-secret",
        "PULID_BOT__DATABASE__URL": "postgresql+asyncpg://bot:pg-secret@db:5432/x",
    }
    shown = str(masked(load_settings(environ=env)))
    for secret in ("discord-secret-token", "telegram-secret", "hook-secret", "pg-secret"):
        assert secret not in shown
    assert "bot:********@db:5432/x" in shown
    assert mask_url("sqlite+aiosqlite:///./data/x.db") == "sqlite+aiosqlite:///./data/x.db"


def test_bad_secret_value_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"PULID_BOT__DATABASE__URL": "mysql://u:pw-secret@h/db"})
    assert "database.url = <hidden>: Value error, must start with sqlite" in str(err.value)
    assert "pw-secret" not in str(err.value)


def test_numeric_looking_strings_stay_strings() -> None:
    s = load_settings(environ={"PULID_BOT__TELEGRAM__TOKEN": "12345"})
    assert s.telegram.token is not None and s.telegram.token.get_secret_value() == "12345"
