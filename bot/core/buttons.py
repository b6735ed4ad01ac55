"""Button presses: decode the stateless action id, check who may press it, act."""

from __future__ import annotations

from bot.core import actions, render
from bot.core.account import AccountCommands
from bot.core.actions import Action, Verb
from bot.core.base import command
from bot.core.errors import BadInput, Forbidden
from bot.core.messages import Caller, Reply
from storage import jobs, results, users
from storage.jobs import UNREADABLE
from storage.records import JobRecord, UserRecord
from storage.schemas import BatchParams, CompareParams, FaceParams, ImagineParams

NOT_YOURS = "This button is not for you."
#: Vary moves the seed by 1..VARY_SPAN; each press (the user's job count) takes the next step.
VARY_SPAN = 16
SEEDS = 2**32


def nearby_seed(seed: int, press: int) -> int:
    """A seed next to ``seed``: ``seed + 1 + press % VARY_SPAN``, wrapping at 2³²."""
    return (seed + 1 + press % VARY_SPAN) % SEEDS


class ButtonCommands(AccountCommands):
    """``press`` is the single entry point for every button of every adapter."""

    @command
    async def press(self, caller: Caller, action_id: str) -> Reply:
        """Handle a button press; the presser must own what the button acts on."""
        action = actions.parse_action(action_id)
        if action.verb in (Verb.CONSENT, Verb.FORGET):
            return await self._confirm(caller, action)
        user = await self._user(caller)
        assert action.job_id is not None
        job = await jobs.get_job(self.db, action.job_id, owner_id=user.id)
        handler = {
            Verb.REROLL: self._reroll,
            Verb.VARY: self._vary,
            Verb.USE_SEED: self._use_seed,
            Verb.DELETE: self._delete,
            Verb.CANCEL: self._cancel,
            Verb.FACE_CHOICE: self._face_choice,
        }[action.verb]
        return await handler(caller, user, job, action.index or 0)

    async def _confirm(self, caller: Caller, action: Action) -> Reply:
        user = await self._known_user(caller)
        if user.id != action.user_id:
            raise Forbidden(NOT_YOURS)
        if action.verb is Verb.CONSENT:
            return await self.answer_consent(user, action.yes)
        if not action.yes:
            return Reply("Kept: nothing was erased.", ephemeral=True, remove_source=True)
        return await self.erase(user)

    async def _reroll(self, caller: Caller, user: UserRecord, job: JobRecord, _: int) -> Reply:
        if isinstance(job.params, FaceParams):
            raise BadInput("only image jobs can be re-rolled")
        params = _readable(job)
        gs = params.settings.model_copy(update={"seed": None})
        return await self._enqueue(caller, user, params.model_copy(update={"settings": gs}))

    async def _vary(self, caller: Caller, user: UserRecord, job: JobRecord, index: int) -> Reply:
        """Image ``index`` again: same prompt and settings, a nearby seed (another per press)."""
        image = await self._image(user, job, index)
        old = _readable(job)
        if image.seed is None:
            raise BadInput("that image has no recorded seed")
        seed = nearby_seed(image.seed, user.jobs_total)
        gs = old.settings.model_copy(update={"seed": seed})
        prompt = image.prompt or _prompt_of(job, index)
        params = ImagineParams(identity_id=old.identity_id, prompt=prompt, settings=gs)
        return await self._enqueue(caller, user, params)

    async def _use_seed(
        self, caller: Caller, user: UserRecord, job: JobRecord, index: int
    ) -> Reply:
        image = await self._image(user, job, index)
        if image.seed is None:
            raise BadInput("that image has no recorded seed")
        await users.update_settings(self.db, user.id, {"seed": image.seed})
        return Reply(
            f"Seed {image.seed} is now your default (/settings --seed random to unpin it).",
            ephemeral=True,
        )

    async def _image(self, user: UserRecord, job: JobRecord, index: int) -> results.ResultRecord:
        if isinstance(job.params, FaceParams):
            raise BadInput("that button works on generated images only")
        return await results.get_result(self.db, user.id, job.id, index)

    async def _delete(self, caller: Caller, user: UserRecord, job: JobRecord, _: int) -> Reply:
        await jobs.delete_job(self.db, user.id, job.id)
        return Reply(f"Deleted job #{job.id} and its images.", ephemeral=True, remove_source=True)

    async def _cancel(self, caller: Caller, user: UserRecord, job: JobRecord, _: int) -> Reply:
        return await self.cancel(caller, job.id)

    async def _face_choice(
        self, caller: Caller, user: UserRecord, job: JobRecord, number: int
    ) -> Reply:
        """Redo a face job that found several faces, with face ``number``.

        The refused job kept its upload in storage (so this works after a restart too); the
        new job takes it over, so each refusal is answered once.
        """
        count = render.faces_found(job)
        if not isinstance(job.params, FaceParams) or count is None:
            raise BadInput("that face choice is no longer open")
        if not 1 <= number <= count:
            raise BadInput(f"choose a face from 1 to {count}")
        params = job.params.model_copy(update={"face_index": number, "crop": None})
        return await self._enqueue(caller, user, params, input_from=job.id)


def _readable(job: JobRecord) -> ImagineParams | BatchParams | CompareParams:
    """The parameters of a generated-image job, or BadInput when they cannot be read."""
    if job.params is None:
        raise BadInput(UNREADABLE)
    assert not isinstance(job.params, FaceParams)
    return job.params


def _prompt_of(job: JobRecord, index: int) -> str:
    """The prompt of image ``index`` from the job's own parameters."""
    params = job.params
    if isinstance(params, ImagineParams):
        return params.prompt
    prompts = getattr(params, "prompts", [])
    if 0 <= index < len(prompts):
        return str(prompts[index])
    raise BadInput("that image has no recorded prompt")
