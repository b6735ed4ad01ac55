"""TEST FIXTURE process standing in for ``python -m engine worker`` in demo orchestration tests.

It reads the same config the real worker gets (``PULID_BOT_CONFIG``), registers and reports
ready through ``storage.workers``, runs :class:`FixtureWorker` until SIGTERM, then reports
stopped. It exercises the demo's process handling without loading any model.
"""

from __future__ import annotations

import asyncio
import signal

from bot_worker_fixture import FINGERPRINT, FixtureWorker

from storage import workers
from storage.config import load_settings
from storage.db import Database

WORKER_ID = "fixture-process"


async def main() -> None:
    settings = load_settings()
    assert settings.engine.preset == "tiny", "the demo must configure the tiny preset"
    db = await Database.open(settings.database.url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await workers.register_worker(db, WORKER_ID, host="test", device="cpu", preset="tiny")
    await workers.mark_worker_ready(db, WORKER_ID, fingerprint=FINGERPRINT)
    await FixtureWorker(db).run(stop, interval=0.05)
    await workers.mark_worker_stopped(db, WORKER_ID)
    await db.close()


if __name__ == "__main__":
    asyncio.run(main())
