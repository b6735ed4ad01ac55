"""/imagine, /batch and /compare: validate everything, then queue one job."""

from __future__ import annotations

from collections.abc import Mapping

from bot.core import limits, parsing
from bot.core.base import command
from bot.core.errors import BadInput
from bot.core.faces import FaceCommands
from bot.core.messages import Caller, Reply
from storage.records import IdentitySummary, UserRecord
from storage.schemas import BatchParams, CompareParams, GenerationSettings, ImagineParams


class GenerateCommands(FaceCommands):
    """Generation commands; each answers with a receipt and never waits for the image."""

    @command
    async def imagine(self, caller: Caller, prompt: str, *, face: str | None = None) -> Reply:
        """One image; ``prompt`` may carry inline ``--flags`` (``--face`` among them)."""
        user = await self._user(caller)
        flags = parsing.extract_flags(prompt)
        text = limits.check_prompt(flags.text, self.limits)
        self.moderation.check_prompt(text)
        identity, gs = await self._prepare(user, flags.values, face)
        params = ImagineParams(identity_id=identity.id, prompt=text, settings=gs)
        return await self._enqueue(caller, user, params)

    @command
    async def batch(self, caller: Caller, prompts: str, *, face: str | None = None) -> Reply:
        """One image per prompt (one per line, or separated by ``|``), the face encoded once."""
        user = await self._user(caller)
        flags = parsing.extract_flags(prompts)
        items = self._prompts(flags.text, self.limits.max_batch_prompts, "batch")
        if not items:
            raise BadInput("/batch needs prompts, one per line (or separated by |)")
        identity, gs = await self._prepare(user, flags.values, face)
        params = BatchParams(identity_id=identity.id, prompts=items, settings=gs)
        return await self._enqueue(caller, user, params)

    @command
    async def compare(self, caller: Caller, prompts: str = "", *, face: str | None = None) -> Reply:
        """The face across the built-in prompt set, or the given prompts: one scored grid."""
        user = await self._user(caller)
        flags = parsing.extract_flags(prompts)
        items = self._prompts(flags.text, self.limits.max_compare_prompts, "compare")
        identity, gs = await self._prepare(user, flags.values, face)
        params = CompareParams(identity_id=identity.id, prompts=items, settings=gs)
        return await self._enqueue(caller, user, params)

    def _prompts(self, text: str, maximum: int, command_name: str) -> list[str]:
        items = parsing.split_prompts(text)
        limits.check_prompt_count(items, maximum, command_name)
        items = [limits.check_prompt(p, self.limits, f"prompt {i}") for i, p in enumerate(items, 1)]
        self.moderation.check_prompts(items)
        return items

    async def _prepare(
        self, user: UserRecord, values: Mapping[str, str], face: str | None
    ) -> tuple[IdentitySummary, GenerationSettings]:
        """The face to use and the merged generation settings."""
        inline = values.get("face")
        if face is not None and inline is not None and face.lower() != inline.lower():
            raise BadInput(f"two faces given: '{face}' and --face {inline}")
        gs = self.generation_settings(user, values)
        return await self._identity(user, face or inline), gs

    def generation_settings(
        self, user: UserRecord, values: Mapping[str, str]
    ) -> GenerationSettings:
        """Defaults ← the user's /settings ← inline ``--flags``."""
        inline = limits.parse_overrides(values, self.limits)
        return limits.build_settings(limits.saved_from_json(user.settings), inline, self.limits)
