"""The /face family: add, more, list, show, default, delete, export, import; and consent.

First use asks for consent. A face request sent before it is held in storage with its photo
(storage.jobs.hold), not in memory: Accept queues it even after a bot restart, Decline erases
it, and retention or /forget erase it if it is never answered. A face *import* waiting for
consent is the one thing kept in memory (it needs no worker and is done at once on Accept);
after a restart, Accept records the consent and asks for the file again.
"""

from __future__ import annotations

from bot.core import actions, parsing, render
from bot.core.base import CoreBase, command, yes_no
from bot.core.errors import BadInput, LimitReached, NotFound
from bot.core.messages import Attachment, Caller, Reply
from bot.core.texts import consent_text
from bot.core.uploads import ImageInfo, check_crop, check_size, first_frame_note, sniff_image
from storage import identities, jobs, users, workers
from storage.records import IdentitySummary, UserRecord
from storage.schemas import CropBox, FaceMode, FaceParams, JobKind

NO_FACES = "You have no saved faces yet: /face add NAME with a photo."
THANKS = "Thank you. Now send /face add NAME with a photo (or /face import the file again)."
#: Discord shows at most 25 autocomplete choices.
MAX_NAMES = 25


class FaceCommands(CoreBase):
    """Saved faces are private: every lookup is by (owner, name)."""

    @command
    async def face_add(
        self,
        caller: Caller,
        name: str,
        image: Attachment,
        *,
        crop: str | CropBox | None = None,
        face: int | None = None,
        make_default: bool = False,
    ) -> Reply:
        """Queue a face job saving the face in ``image`` as ``name`` (asks consent first)."""
        user = await self._user(caller)
        params, info = self._face_params(FaceMode.ADD, name, image, crop, face, make_default)
        names = await identities.list_identity_names(self.db, user.id)
        if name.lower() in (n.lower() for n in names):
            raise BadInput(f"You already have a face named '{name}'; /face more adds photos.")
        if len(names) >= (most := self.limits.max_identities_per_user):
            raise LimitReached(f"You can save at most {most} faces; delete one first.")
        return first_frame_note(await self._with_consent(caller, user, params, image.data), info)

    @command
    async def face_more(
        self,
        caller: Caller,
        name: str,
        image: Attachment,
        *,
        crop: str | CropBox | None = None,
        face: int | None = None,
    ) -> Reply:
        """Queue a face job adding another reference photo to face ``name``."""
        user = await self._user(caller)
        params, info = self._face_params(FaceMode.MORE, name, image, crop, face, False)
        await identities.get_identity(self.db, user.id, params.name)
        return first_frame_note(await self._with_consent(caller, user, params, image.data), info)

    def _face_params(
        self,
        mode: FaceMode,
        name: str,
        image: Attachment,
        crop: str | CropBox | None,
        face: int | None,
        make_default: bool,
    ) -> tuple[FaceParams, ImageInfo]:
        """The face job's parameters, and what the upload's header says."""
        parsing.check_name(name)
        if crop is not None and face is not None:
            raise BadInput("give a crop box or a face number, not both")
        info = sniff_image(image, self.limits.max_upload_bytes)
        box = parsing.parse_crop(crop) if isinstance(crop, str) else crop
        if box is not None:
            check_crop(box, info, crop if isinstance(crop, str) else "box")
        params = FaceParams(
            mode=mode, name=name, crop=box, face_index=face, make_default=make_default
        )
        return params, info

    async def _with_consent(
        self, caller: Caller, user: UserRecord, params: FaceParams, data: bytes
    ) -> Reply:
        """Queue the face job, or hold it in storage until the user accepts the terms."""
        if user.consent_at is not None:
            return await self._enqueue(caller, user, params, input_blob=data)
        await self._check_rate(user)
        await jobs.hold(self.db, user.id, params, delivery=caller.delivery(), input_blob=data)
        self._pending.pop(user.id, None)  # the newest request is the one that waits
        return self.consent_request(user)

    def consent_request(self, user: UserRecord) -> Reply:
        """The consent text with Accept / Decline buttons for this one user."""
        buttons = yes_no(
            ("Accept", actions.consent(user.id, True)), ("Decline", actions.consent(user.id, False))
        )
        return Reply(text=consent_text(self.config.storage), buttons=buttons, ephemeral=True)

    async def answer_consent(self, user: UserRecord, yes: bool) -> Reply:
        """Record the answer; on Accept, queue the face request that was waiting for it."""
        pending = self._pending.pop(user.id, None)
        if not yes:
            await jobs.drop_held(self.db, user.id)
            return Reply("Declined: nothing was saved.", ephemeral=True)
        await users.record_consent(self.db, user.id)
        queued = await jobs.release_held(self.db, user.id)
        if queued is not None:
            return render.receipt(queued.job_id, JobKind.FACE, queued.position)
        if pending is not None:
            return await pending()
        return Reply(THANKS, ephemeral=True)

    async def face_names(
        self, caller: Caller, prefix: str = "", limit: int = MAX_NAMES
    ) -> list[str]:
        """The caller's own face names for autocompletion, at most ``limit``.

        Names starting with ``prefix`` come first, then names containing it (both ignoring
        case), each group alphabetical. Read-only: an unknown caller gets none and no user is
        created; a banned one gets none.
        """
        user = await users.find_user(self.db, caller.platform, caller.user_id)
        if user is None or user.banned:
            return []
        needle = prefix.strip().lower()
        names = await identities.list_identity_names(self.db, user.id)
        hits = sorted(
            (n for n in names if needle in n.lower()),
            key=lambda n: (not n.lower().startswith(needle), n.lower()),
        )
        return hits[: max(limit, 0)]

    async def has_face(self, caller: Caller, name: str) -> bool:
        """Whether the caller has a saved face ``name`` (ignoring case). Read-only: an unknown
        caller has none and no user is created."""
        user = await users.find_user(self.db, caller.platform, caller.user_id)
        if user is None:
            return False
        names = await identities.list_identity_names(self.db, user.id)
        return name.lower() in (n.lower() for n in names)

    @command
    async def face_list(self, caller: Caller) -> Reply:
        """The caller's saved faces."""
        user = await self._user(caller)
        faces = await identities.list_identities(self.db, user.id)
        if not faces:
            return Reply(NO_FACES, ephemeral=True)
        lines = [f"Your faces ({len(faces)}/{self.limits.max_identities_per_user}):"]
        lines += [f"• {_describe(f)}" for f in faces]
        return Reply("\n".join(lines), ephemeral=True)

    @command
    async def face_show(self, caller: Caller, name: str) -> Reply:
        """One face: its details and thumbnail."""
        user = await self._user(caller)
        face = await identities.get_identity(self.db, user.id, parsing.check_name(name))
        files = (Attachment(f"{face.name}.png", face.thumbnail),) if face.thumbnail else ()
        text = f"{_describe(face)}; saved {face.created_at:%Y-%m-%d}."
        return Reply(text, files=files, ephemeral=True)

    @command
    async def face_default(self, caller: Caller, name: str) -> Reply:
        """Make ``name`` the face used when none is named."""
        user = await self._user(caller)
        face = await identities.set_default(self.db, user.id, parsing.check_name(name))
        return Reply(f"'{face.name}' is now your default face.", ephemeral=True)

    @command
    async def face_delete(self, caller: Caller, name: str) -> Reply:
        """Delete a saved face."""
        user = await self._user(caller)
        await identities.delete_identity(self.db, user.id, parsing.check_name(name))
        default = await identities.get_default_identity(self.db, user.id)
        after = f" Your default face is now '{default.name}'." if default else ""
        return Reply(f"Deleted face '{name}'.{after}", ephemeral=True)

    @command
    async def face_export(self, caller: Caller, name: str) -> Reply:
        """The face as a .safetensors file."""
        user = await self._user(caller)
        face = await identities.get_identity(self.db, user.id, parsing.check_name(name))
        data = await identities.export_identity(self.db, user.id, face.name)
        text = f"Face '{face.name}' — import it with /face import on a bot with the same models."
        file = Attachment(f"{face.name}.safetensors", data, f"pulid-bot face {face.name}")
        return Reply(text, files=(file,), ephemeral=True)

    @command
    async def face_import(self, caller: Caller, file: Attachment, name: str | None = None) -> Reply:
        """Save a face from an exported .safetensors file (asks consent first)."""
        user = await self._user(caller)
        if name is not None:
            parsing.check_name(name)
        check_size(file, self.limits.max_upload_bytes, "face file")

        async def go() -> Reply:
            fingerprints = await workers.ready_fingerprints(self.db) or None
            face = await identities.import_identity(
                self.db, user.id, file.data, name=name, accept_fingerprints=fingerprints
            )
            return Reply(f"Imported {_describe(face)}.", ephemeral=True)

        if user.consent_at is not None:
            return await go()
        await jobs.drop_held(self.db, user.id)  # the newest request is the one that waits
        self._pending[user.id] = go
        return self.consent_request(user)

    async def _identity(self, user: UserRecord, name: str | None) -> IdentitySummary:
        """The named face, or the default one."""
        if name is not None:
            return await identities.get_identity(self.db, user.id, parsing.check_name(name))
        face = await identities.get_default_identity(self.db, user.id)
        if face is None:
            raise NotFound(NO_FACES)
        return face


def _describe(face: IdentitySummary) -> str:
    photos = "photo" if face.n_refs == 1 else "photos"
    default = ", default" if face.is_default else ""
    return f"'{face.name}' ({face.n_refs} {photos}{default})"
