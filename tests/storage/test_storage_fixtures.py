"""The PostgreSQL fixture skips visibly without a server URL, and fails instead under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PG_TEST = "tests/storage/test_storage_migrations.py::test_upgrade_creates_schema[postgres]"


def _run(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PULID_BOT_TEST_PG_URL", "CI")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", PG_TEST]
    return subprocess.run(
        cmd, cwd=ROOT, env=clean | env, capture_output=True, text=True, timeout=120
    )


def test_skips_with_reason_without_url() -> None:
    result = _run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "PULID_BOT_TEST_PG_URL" in result.stdout


def test_fails_under_ci_without_url() -> None:
    result = _run(CI="1")
    assert result.returncode != 0
    assert "must run in CI" in result.stdout
