"""``pulid-bot demo``: its settings and config file, and the whole orchestration.

The orchestration test runs a fixture worker process in place of ``python -m engine worker``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from bot.demo import demo_settings, run_demo, to_toml, worker_config
from storage.config import DiscordSettings, Settings, StorageSettings, load_settings

FIXTURE_WORKER = Path(__file__).with_name("bot_worker_process.py")


def test_demo_settings_and_worker_config_round_trip(tmp_path: Path) -> None:
    base = Settings(
        storage=StorageSettings(data_dir=tmp_path / "d"),
        discord=DiscordSettings(token="secret-token"),  # type: ignore[arg-type]
    )
    settings = demo_settings(base)
    assert settings.database.url == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'demo.db'}"
    assert settings.engine.preset == "tiny" and settings.engine.devices == ["cpu"]
    text = to_toml(worker_config(settings))
    assert "secret-token" not in text and "[discord]" not in text
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    loaded = load_settings(path, environ={})
    assert loaded.model_dump(exclude={"discord", "telegram"}) == settings.model_dump(
        exclude={"discord", "telegram"}
    )


def test_demo_runs_the_scripted_session(tmp_path: Path) -> None:
    settings = Settings(storage=StorageSettings(data_dir=tmp_path / "data"))
    out_dir = tmp_path / "demo-out"
    out = io.StringIO()
    code = run_demo(
        settings, out_dir=out_dir, worker_argv=[sys.executable, str(FIXTURE_WORKER)], out=out
    )
    text = out.getvalue()
    assert code == 0, text + (tmp_path / "data" / "demo-worker.log").read_text()
    assert "draws noise, not people" in text and 'preset = "flux-dev"' in text
    for step in ("/face add astronaut", "/imagine", "/batch astronaut", "/compare astronaut"):
        assert f"> {step}" in text
    assert "Saved face 'astronaut'" in text and "done: 3 images." in text
    names = sorted(p.name for p in out_dir.iterdir())
    assert any(n.endswith("-grid.png") for n in names)
    assert sum(n.endswith(".png") for n in names) >= 6
    again = run_demo(
        settings, out_dir=out_dir, worker_argv=[sys.executable, str(FIXTURE_WORKER)], out=out
    )
    assert again == 0  # a fresh demo database each run


def test_demo_reports_a_worker_that_dies(tmp_path: Path) -> None:
    settings = Settings(storage=StorageSettings(data_dir=tmp_path / "data"))
    out = io.StringIO()
    code = run_demo(
        settings,
        out_dir=tmp_path / "o",
        worker_argv=[sys.executable, "-c", "raise SystemExit(3)"],
        out=out,
    )
    assert code == 1
    assert "! The engine worker exited with code 3; see " in out.getvalue()
