"""/jobs, /cancel, /settings, /forget, /help, and the admin commands /ban and /unban."""

from __future__ import annotations

from collections.abc import Mapping

from bot.core import actions, limits, parsing
from bot.core.base import command, yes_no
from bot.core.errors import BadInput, Forbidden
from bot.core.generate import GenerateCommands
from bot.core.messages import Button, Caller, Reply
from bot.core.render import plural
from bot.core.texts import help_text
from storage import identities, jobs, users
from storage.job_queries import ACTIVE
from storage.records import JobRecord, UserRecord
from storage.schemas import JobState

JOBS_SHOWN = 10


class AccountCommands(GenerateCommands):
    """The user's queue, defaults and data."""

    @command
    async def jobs(self, caller: Caller) -> Reply:
        """The caller's recent jobs, newest first, with Cancel buttons for active ones."""
        user = await self._user(caller)
        recent = await jobs.list_jobs(self.db, owner_id=user.id, limit=JOBS_SHOWN)
        if not recent:
            return Reply("You have no jobs yet. Try /imagine.", ephemeral=True)
        lines = ["Your jobs:"] + [await self._job_line(j) for j in recent]
        active = [j for j in recent if j.state.value in ACTIVE]
        buttons = tuple(Button(f"Cancel #{j.id}", actions.cancel(j.id)) for j in active)
        return Reply("\n".join(lines), buttons=buttons[:5], ephemeral=True)

    async def _job_line(self, job: JobRecord) -> str:
        head = f"#{job.id} {job.kind.value}"
        if job.held:
            return f"{head}: waiting for you to accept the terms"
        if job.state is JobState.QUEUED:
            return f"{head}: queued, position {await jobs.queue_position(self.db, job.id)}"
        if job.state is JobState.RUNNING and job.progress_total:
            return f"{head}: running, step {job.progress_step}/{job.progress_total}"
        if job.state is JobState.FAILED:
            return f"{head}: failed ({job.error_user})"
        return f"{head}: {job.state.value}"

    @command
    async def cancel(self, caller: Caller, job_id: int | str) -> Reply:
        """Cancel a queued job, or ask a running one to stop."""
        user = await self._user(caller)
        number = job_id if isinstance(job_id, int) else parsing.parse_job_id(job_id)
        state = await jobs.cancel(self.db, user.id, number)
        if state is JobState.CANCELLED:
            return Reply(f"Job #{number} cancelled.", ephemeral=True)
        return Reply(f"Job #{number} will stop at its next step.", ephemeral=True)

    @command
    async def settings(self, caller: Caller, changes: str = "") -> Reply:
        """Show defaults; ``--flags`` save them; ``reset`` clears them."""
        user = await self._user(caller)
        text = changes.strip()
        if text.lower() == "reset":
            await users.update_settings(self.db, user.id, {}, replace=True)
            return await self._show_settings(user.id, "Your defaults are reset.")
        flags = parsing.extract_flags(text)
        if flags.text:
            raise BadInput(f"/settings takes --flags only, e.g. --ar 3:4 (not {flags.text!r})")
        if not flags.values:
            return await self._show_settings(user.id, "Your defaults:")
        return await self._save_settings(user, flags.values)

    async def _save_settings(self, user: UserRecord, values: Mapping[str, str]) -> Reply:
        face = values.get("face")
        if face is not None:  # checked first: a refused command saves nothing
            face = (await identities.get_identity(self.db, user.id, parsing.check_name(face))).name
        parsed = limits.parse_overrides(values, self.limits)
        merged = limits.saved_from_json(user.settings)
        if "ar" in parsed or "size" in parsed:
            merged.pop("ar", None)
            merged.pop("size", None)
        merged.update(parsed)
        merged = {k: v for k, v in merged.items() if v is not None}  # seed random = unpinned
        limits.build_settings(merged, {}, self.limits)  # refuse a combination that cannot run
        await users.update_settings(self.db, user.id, limits.saved_to_json(merged), replace=True)
        if face is not None:
            await identities.set_default(self.db, user.id, face)
        return await self._show_settings(user.id, "Saved. Your defaults:")

    async def _show_settings(self, user_id: int, head: str) -> Reply:
        user = await users.get_user(self.db, user_id)
        gs = self.generation_settings(user, {})
        default = await identities.get_default_identity(self.db, user.id)
        face = f"--face {default.name}" if default else "no face saved yet"
        negative = f'\n--no "{gs.negative_prompt}"' if "no" in user.settings else ""
        return Reply(f"{head}\n{limits.describe(gs)}\n{face}{negative}", ephemeral=True)

    @command
    async def forget(self, caller: Caller) -> Reply:
        """Ask for confirmation before erasing everything of the caller."""
        user = await self._known_user(caller)
        faces = await identities.list_identity_names(self.db, user.id)
        history = await jobs.list_jobs(self.db, owner_id=user.id, limit=1000)
        text = (
            f"This erases your {plural(len(faces), 'saved face')}, {plural(len(history), 'job')} "
            "and all their images, and your settings. It cannot be undone."
        )
        buttons = yes_no(
            ("Erase everything", actions.forget(user.id, True)),
            ("Keep my data", actions.forget(user.id, False)),
            danger=True,
        )
        return Reply(text, buttons=buttons, ephemeral=True)

    async def erase(self, user: UserRecord) -> Reply:
        """Cancel the user's active jobs, then delete every row of theirs."""
        active = [JobState.QUEUED, JobState.RUNNING]
        for job in await jobs.list_jobs(self.db, owner_id=user.id, states=active):
            await jobs.cancel(self.db, user.id, job.id)
        counts = await users.erase_user(self.db, user.id)
        self._forget_user_state(user.id)
        return Reply(
            f"Erased {plural(counts.identities, 'face')}, {plural(counts.jobs, 'job')} and "
            f"{plural(counts.results, 'image')}. "
            "Nothing of yours is left here.",
            ephemeral=True,
            remove_source=True,
        )

    @command
    async def help(self, caller: Caller, topic: str | None = None) -> Reply:
        """The command summary, or one topic."""
        return Reply(help_text(topic, self.limits), ephemeral=True)

    @command
    async def ban(self, caller: Caller, target: str) -> Reply:
        """Admins only: ban ``platform:user_id`` (or a user id on the admin's platform)."""
        return await self._set_ban(caller, target, True)

    @command
    async def unban(self, caller: Caller, target: str) -> Reply:
        """Admins only: lift a ban."""
        return await self._set_ban(caller, target, False)

    async def _set_ban(self, caller: Caller, target: str, banned: bool) -> Reply:
        if not self.moderation.is_admin(caller):
            raise Forbidden("Only this bot's admins can ban or unban users.")
        who = _target(caller, target)
        if banned and self.moderation.is_admin(who):
            raise BadInput(f"{who.key} is an admin and cannot be banned")
        user = await users.get_or_create_user(self.db, who.platform, who.user_id)
        await users.set_banned(self.db, user.id, banned)
        return Reply(f"{who.key} is {'banned' if banned else 'no longer banned'}.", ephemeral=True)


def _target(caller: Caller, text: str) -> Caller:
    words = text.split()
    if len(words) != 1:
        raise BadInput("name one user: platform:user_id, or a user id on this platform")
    platform, sep, user_id = words[0].rpartition(":")
    if not user_id or (sep and not platform):
        raise BadInput(f"{words[0]!r} is not a user (platform:user_id)")
    return Caller(platform=platform or caller.platform, user_id=user_id)
