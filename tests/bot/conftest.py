"""Fixtures for the command-core tests: a migrated SQLite database, a Core, a fixture worker."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bot_worker_fixture import FixtureWorker

from bot.core.app import Core
from bot.core.messages import Caller
from storage.config import DatabaseSettings, Settings, StorageSettings


@pytest.fixture
def settings(tmp_path: Path, sqlite_template: Path) -> Settings:
    """Default settings on a fresh, migrated SQLite file."""
    path = tmp_path / "bot.db"
    shutil.copyfile(sqlite_template, path)
    return Settings(
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{path}"),
        storage=StorageSettings(data_dir=tmp_path / "data"),
    )


@pytest.fixture
async def core(settings: Settings) -> AsyncIterator[Core]:
    c = await Core.open(settings)
    yield c
    await c.close()


@pytest.fixture
def worker(core: Core) -> FixtureWorker:
    return FixtureWorker(core.db)


@pytest.fixture
def alice() -> Caller:
    return Caller("console", "alice", channel_id="alice")


@pytest.fixture
def bob() -> Caller:
    return Caller("console", "bob", channel_id="bob")
