"""The ``pulid-bot`` command line: help, config show, db upgrade."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.cli import _HANDLERS, _command_key, build_parser, engine_env

COMMANDS = ("serve", "engine", "chat", "demo", "db", "config", "models")


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PULID_BOT")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env=full_env | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_command(tmp_path: Path) -> None:
    began = time.monotonic()
    out = _cli("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for command in COMMANDS:
        assert command in out.stdout
    assert time.monotonic() - began < 10


@pytest.mark.parametrize(
    "argv",
    [["db", "upgrade"], ["config", "show"], ["models", "download"], ["models", "check"]],
)
def test_sub_commands_parse(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]
    assert _command_key(args) == " ".join(argv) and _command_key(args) in _HANDLERS


def test_engine_children_get_no_chat_tokens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PULID_BOT__DISCORD__TOKEN", "d-secret")
    monkeypatch.setenv("PULID_BOT__TELEGRAM__TOKEN", "t-secret")
    monkeypatch.setenv("PULID_BOT__ENGINE__PRESET", "tiny")
    env = engine_env(tmp_path / "c.toml")
    assert "PULID_BOT__DISCORD__TOKEN" not in env and "PULID_BOT__TELEGRAM__TOKEN" not in env
    assert env["PULID_BOT__ENGINE__PRESET"] == "tiny"
    assert env["PULID_BOT_CONFIG"] == str((tmp_path / "c.toml").resolve())


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    out = _cli("config", "show", cwd=tmp_path, env={"PULID_BOT__DISCORD__TOKEN": "tok-secret"})
    assert out.returncode == 0, out.stderr
    assert "tok-secret" not in out.stdout + out.stderr
    assert '"preset": "tiny"' in out.stdout


def test_bad_config_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[engine]\npreset = "huge"\n')
    out = _cli("config", "show", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "engine.preset" in out.stderr


def test_db_upgrade_creates_the_schema_in_an_empty_folder(tmp_path: Path) -> None:
    out = _cli("db", "upgrade", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    db = tmp_path / "data" / "pulid-bot.db"
    tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master")}
    assert {"users", "identities", "jobs", "results", "alembic_version"} <= tables
    again = _cli("db", "upgrade", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_an_unmigrated_database_is_refused_with_one_line(tmp_path: Path) -> None:
    out = _cli("chat", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "error: The database has no pulid-bot schema yet; run `pulid-bot db upgrade`."
    )


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://bot:pw-secret@127.0.0.1:1/pulid"
    out = _cli("db", "upgrade", cwd=tmp_path, env={"PULID_BOT__DATABASE__URL": url})
    assert out.returncode == 1
    line = out.stderr.strip()
    assert line.startswith("error: Cannot use the database postgresql+asyncpg://bot:********@")
    assert "\n" not in line and "pw-secret" not in line
