"""The worker as a process: ``python -m engine worker`` killed, stopped, or unable to start.

Real subprocesses on SQLite and PostgreSQL: a worker killed with SIGKILL mid-job leaves a job that
a second worker completes exactly once (the attempt counted); SIGTERM mid-job releases the job
(the attempt not counted) and exits 0; a start-up
that cannot succeed exits 1 with one ``error:`` line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from worker_helpers import (
    ROOT,
    drain,
    job,
    make_user,
    one_thread_engine,
    outputs,
    save_astronaut,
    small,
)

from engine.__main__ import main
from storage import jobs, workers
from storage.records import JobRecord, WorkerRecord
from storage.schemas import ImagineParams, JobState, WorkerState

pytestmark = pytest.mark.timeout(180)
START_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def engine():
    yield from one_thread_engine()


def worker_env(db_url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULID_BOT")}
    env |= {"PYTHONPATH": str(ROOT), "PULID_BOT__DATABASE__URL": db_url}
    env |= {f"PULID_BOT__{k.upper()}": v for k, v in settings.items()}
    return env


def start_worker(tmp_path: Path, db_url: str, *args: str) -> subprocess.Popen[bytes]:
    """``python -m engine worker`` on one torch thread, logging to ``tmp_path/worker.log``."""
    log = (tmp_path / "worker.log").open("wb")
    argv = [sys.executable, "-m", "engine", "worker", "--threads", "1", *args]
    return subprocess.Popen(
        argv, cwd=tmp_path, env=worker_env(db_url), stdout=log, stderr=subprocess.STDOUT
    )


async def running_job(db, job_id: int, proc: subprocess.Popen[bytes], log: Path) -> JobRecord:
    """Poll storage until the worker process reports progress on the job (it is mid-job)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        record = await job(db, job_id)
        if record.state is JobState.RUNNING and record.progress_step > 0:
            return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"no progress within {START_TIMEOUT_S}s:\n{log.read_text()}")


async def the_worker(db, worker_id: str) -> WorkerRecord:
    [found] = [w for w in await workers.list_workers(db) if w.id == worker_id]
    return found


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


async def long_job(db, engine, steps: int) -> tuple[int, int]:
    owner = await make_user(db)
    face = await save_astronaut(db, owner)
    params = ImagineParams(identity_id=face.id, prompt="x", settings=small(steps=steps, seed=5))
    return owner, (await jobs.enqueue(db, owner, params)).job_id


async def test_a_job_killed_mid_run_is_completed_once_by_another_worker(
    db, db_url, engine, tmp_path
) -> None:
    owner, job_id = await long_job(db, engine, steps=30)
    proc = start_worker(tmp_path, db_url, "--worker-id", "victim")
    try:
        running = await running_job(db, job_id, proc, tmp_path / "worker.log")
        ready = await the_worker(db, "victim")
        assert (ready.state, ready.fingerprint) == (WorkerState.READY, engine.fingerprint)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        stop(proc)
    assert (running.lease_owner, running.attempts) == ("victim", 1)
    expired = running.lease_expires + timedelta(seconds=1)  # as if the lease had run out
    assert (await jobs.requeue_expired(db, now=expired)).requeued == [job_id]
    survivor = await drain(db, engine)
    done = await job(db, job_id)
    assert (done.state, done.attempts, done.lease_owner) == (JobState.DONE, 2, survivor.worker_id)
    [image] = await outputs(db, owner, job_id)
    assert image.seed == 5 and survivor.endings == {"done": 1}


async def test_sigterm_mid_job_releases_it_and_exits_zero(db, db_url, engine, tmp_path) -> None:
    _, job_id = await long_job(db, engine, steps=30)
    proc = start_worker(tmp_path, db_url, "--worker-id", "stopped", "--grace", "0")
    log = tmp_path / "worker.log"
    try:
        await running_job(db, job_id, proc, log)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        stop(proc)
    assert code == 0, log.read_text()
    released = await job(db, job_id)  # back in the queue, the attempt given back
    assert (released.state, released.attempts, released.lease_owner) == (JobState.QUEUED, 0, None)
    assert (await the_worker(db, "stopped")).state is WorkerState.STOPPED
    text = log.read_text()
    assert "received SIGTERM" in text and f"job {job_id} released" in text


# --- start-up failures (in process: the same main() the subprocess runs) --------------------


def run_main(monkeypatch, tmp_path: Path, db_url: str, *args: str, **settings: str) -> int:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("PULID_BOT")]:
        monkeypatch.delenv(key)
    for key, value in worker_env(db_url, **settings).items():
        monkeypatch.setenv(key, value)
    return main(["worker", "--burst", *args])


def test_missing_weights_exit_1_with_one_line(monkeypatch, capsys, tmp_path, db_url) -> None:
    code = run_main(
        monkeypatch, tmp_path, db_url,
        engine__preset="flux-dev", engine__model_dir=str(tmp_path / "no-models"),
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: flux weights missing: ") and "models download" in err[0]


def test_a_database_without_schema_exit_1(monkeypatch, capsys, tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    assert run_main(monkeypatch, tmp_path, url) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == "error: The database has no pulid-bot schema yet; run `pulid-bot db upgrade`."


def test_an_absent_device_exit_1(monkeypatch, capsys, tmp_path, db_url) -> None:
    assert run_main(monkeypatch, tmp_path, db_url, "--device", "cuda:7") == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: device cuda:7 is not available")
