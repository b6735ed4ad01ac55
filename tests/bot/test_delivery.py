"""The Deliverer: results once, retries with backoff, resume after restart, throttled progress."""

from __future__ import annotations

import asyncio
import logging

import pytest
from bot_helpers import Inbox, add_face, say
from bot_worker_fixture import FixtureWorker

from bot.core import delivery
from bot.core.app import Core
from bot.core.delivery import Deliverer, Undeliverable, prune_expired
from bot.core.messages import Caller, Reply, ReplyKind
from storage import jobs
from storage.errors import NotFound
from storage.schemas import Delivery, JobState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_each_result_once_and_per_platform(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    tg = Caller("telegram", "7", channel_id="chat-7", message_ref="msg-1")
    await add_face(core, worker, tg)
    console, telegram = Inbox(), Inbox()
    assert await Deliverer(core.db, "console", console).run_once() == 1
    assert await Deliverer(core.db, "telegram", telegram).run_once() == 1
    [(delivery, reply)] = telegram.replies
    assert (delivery.channel_id, delivery.message_ref) == ("chat-7", "msg-1")
    assert reply.kind is ReplyKind.RESULT and "Saved face 'me'" in reply.text
    assert await Deliverer(core.db, "telegram", telegram).run_once() == 0
    assert len(telegram.replies) == 1 and len(console.replies) == 1


async def test_failed_sends_are_retried_with_backoff_and_kept(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    await Deliverer(core.db, "console", Inbox()).run_once()
    receipt = await say(core, alice, "/imagine a cat")
    await worker.drain()
    clock, inbox = Clock(), Inbox(fail_times=2)
    deliverer = Deliverer(core.db, "console", inbox, clock=clock, max_backoff=5)
    assert await deliverer.run_once() == 0  # the send fails
    assert inbox.replies == []
    assert (await jobs.get_job(core.db, receipt.job_id or 0)).delivered is False
    assert await deliverer.run_once() == 0  # backing off: not even tried
    assert inbox.fail_times == 1
    clock.now += 2.5
    assert await deliverer.run_once() == 0  # tried, failed again
    clock.now += 2.5
    assert await deliverer.run_once() == 0  # second backoff is 4 s
    clock.now += 2.0
    assert await deliverer.run_once() == 1
    assert (await jobs.get_job(core.db, receipt.job_id or 0)).delivered is True


async def test_a_result_that_keeps_failing_is_given_up_after_max_attempts(
    core: Core, worker: FixtureWorker, alice: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    await add_face(core, worker, alice)
    await Deliverer(core.db, "console", Inbox()).run_once()
    receipt = await say(core, alice, "/imagine a cat")
    await worker.drain()
    clock, inbox = Clock(), Inbox(fail_times=10)
    deliverer = Deliverer(core.db, "console", inbox, clock=clock, max_backoff=1, max_attempts=3)
    for _ in range(3):
        assert await deliverer.run_once() == 0
        clock.now += 2
    assert inbox.fail_times == 7  # three tries, then given up ...
    job = await jobs.get_job(core.db, receipt.job_id or 0)
    assert job.delivered is True and job.state is JobState.DONE  # ... still listed in /jobs
    given_up = [r for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 1 and "ConnectionError" in given_up[0].getMessage()
    clock.now += 1000
    assert await deliverer.run_once() == 0 and inbox.fail_times == 7  # never tried again


async def test_results_waiting_out_a_backoff_do_not_hold_up_newer_ones(
    core: Core, worker: FixtureWorker, alice: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "BATCH", 2)
    await add_face(core, worker, alice)
    await Deliverer(core.db, "console", Inbox()).run_once()
    stuck = [(await say(core, alice, f"/imagine {p}")).job_id for p in ("a", "b")]
    await worker.drain()
    newer = (await say(core, alice, "/imagine c")).job_id
    await worker.drain()
    sent: list[int | None] = []

    async def send(_: Delivery, reply: Reply) -> None:
        if reply.job_id in stuck:
            raise ConnectionError("this chat is down")
        sent.append(reply.job_id)

    deliverer = Deliverer(core.db, "console", send, clock=Clock())
    assert await deliverer.run_once() == 0  # the two oldest fill the batch, and fail
    assert await deliverer.run_once() == 1  # they wait out their backoff: the newer one goes
    assert sent == [newer]


async def test_restart_resumes_undelivered(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    for prompt in ("a", "b", "c"):
        await say(core, alice, f"/imagine {prompt}")
    await worker.drain()
    first = Inbox(fail_times=10)
    await Deliverer(core.db, "console", first).run_once()  # the "crashed" process
    after_restart = Inbox()
    assert await Deliverer(core.db, "console", after_restart).run_once() == 4
    assert len({r.job_id for _, r in after_restart.replies}) == 4


async def test_progress_is_throttled(core: Core, worker: FixtureWorker, alice: Caller) -> None:
    await add_face(core, worker, alice)
    await Deliverer(core.db, "console", Inbox()).run_once()
    receipt = await say(core, alice, "/imagine a cat")
    job = await jobs.claim(core.db, "w")
    assert job is not None
    clock, progress = Clock(), Inbox()
    deliverer = Deliverer(
        core.db, "console", Inbox(), progress=progress, clock=clock, progress_interval=3
    )
    await deliverer.run_once()
    await jobs.progress(core.db, job.id, "w", 1, 28)
    await deliverer.run_once()  # too soon after "started"
    clock.now += 3
    await deliverer.run_once()
    await deliverer.run_once()  # unchanged step
    await jobs.progress(core.db, job.id, "w", 14, 28)
    clock.now += 1
    await deliverer.run_once()  # too soon
    clock.now += 2
    await deliverer.run_once()
    texts = [r.text for r in progress.for_job(receipt.job_id or 0)]
    assert texts == [
        f"Job #{job.id} (imagine) started.",
        f"Job #{job.id} (imagine) running: step 1/28 ░░░░░░░░░░",
        f"Job #{job.id} (imagine) running: step 14/28 ▓▓▓▓▓░░░░░",
    ]
    assert all(r.kind is ReplyKind.PROGRESS for r in progress.for_job(job.id))


async def test_run_loop_delivers_until_stopped(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    inbox = Inbox()
    deliverer = Deliverer(core.db, "console", inbox, poll_seconds=0.02)
    task = asyncio.create_task(deliverer.run())
    await add_face(core, worker, alice)
    for _ in range(200):
        if inbox.replies:
            break
        await asyncio.sleep(0.01)
    deliverer.stop()
    await asyncio.wait_for(task, 2)
    assert len(inbox.replies) == 1


async def test_retention_prunes_undelivered_results(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    receipt = await say(core, alice, "/imagine a cat")
    await worker.drain()
    waiting = await say(core, alice, "/imagine a dog")  # still queued: never pruned
    await prune_expired(core.db, 30)
    assert len(await jobs.undelivered(core.db, platforms=["console"])) == 2
    await prune_expired(core.db, 1e-9)
    assert await jobs.undelivered(core.db, platforms=["console"]) == []
    with pytest.raises(NotFound):
        await jobs.get_job(core.db, receipt.job_id or 0)
    assert (await jobs.get_job(core.db, waiting.job_id or 0)).state is JobState.QUEUED


class GoneChat:
    """A send callback whose chat is gone for good."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, delivery: Delivery, reply: Reply) -> None:
        self.calls += 1
        raise Undeliverable("chat not found")


async def test_an_undeliverable_result_is_dropped_once(
    core: Core, worker: FixtureWorker, alice: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    receipt = await add_face(core, worker, alice)
    gone = GoneChat()
    deliverer = Deliverer(core.db, "console", gone, progress=gone)
    with caplog.at_level(logging.INFO, logger="bot.core.delivery"):
        assert await deliverer.run_once() == 0
        assert await deliverer.run_once() == 0
    assert gone.calls == 1  # marked delivered: never tried again, no backoff
    assert (await jobs.get_job(core.db, receipt.job_id or 0)).delivered
    lines = [r for r in caplog.records if r.name == "bot.core.delivery"]
    assert [r.levelno for r in lines] == [logging.WARNING]
    assert "undeliverable on console" in lines[0].getMessage() and not lines[0].exc_info


async def test_a_remembered_receipt_comes_back_with_the_delivery(
    core: Core, worker: FixtureWorker, alice: Caller
) -> None:
    await add_face(core, worker, alice)
    await Deliverer(core.db, "console", Inbox()).run_once()
    receipt = await say(core, alice, "/imagine a cat")
    assert await core.remember_receipt(receipt.job_id or 0, extra={"receipt": "alice:41"})
    assert not await core.remember_receipt(999_999, extra={"receipt": "x:1"})
    assert not await core.remember_receipt(receipt.job_id or 0, "x" * 300)  # logged, not raised
    progress, results = Inbox(), Inbox()
    restarted = Deliverer(core.db, "console", results, progress=progress)  # a new process
    await worker.drain()
    await restarted.run_once()
    [(delivery, reply)] = results.replies
    assert reply.job_id == receipt.job_id
    assert delivery.extra == {"receipt": "alice:41"} and delivery.channel_id == "alice"
