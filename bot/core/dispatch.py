"""Text commands → core calls, for platforms where commands arrive as text (console, Telegram).

Adapters with typed options (Discord slash commands) call the :class:`~bot.core.app.Core`
methods directly instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.core import parsing
from bot.core.errors import BadInput
from bot.core.messages import Attachment, Caller, Reply

if TYPE_CHECKING:
    from bot.core.app import Core

#: Turns a file reference typed by the user (a path on the console) into an upload.
FileOpener = Callable[[str], Attachment]

_FACE_SUBCOMMANDS = ("add", "more", "list", "show", "default", "delete", "export", "import")


@dataclass(frozen=True)
class FaceOptions:
    """The words after ``/face add NAME``: an image reference, crop box, face number, default."""

    image_ref: str | None = None
    crop: str | None = None
    face: int | None = None
    make_default: bool = False


def parse_face_options(words: Sequence[str]) -> FaceOptions:
    """``[IMAGE] [crop x,y,w,h] [face N] [default]`` (``crop=…`` and ``face=…`` work too)."""
    words = [p for w in words for p in _split_eq(w)]
    image, crop, face, default = None, None, None, False
    i = 0
    while i < len(words):
        word = words[i].lower()
        if word in ("crop", "face") and i + 1 < len(words):
            if word == "crop":
                crop = words[i + 1]
            else:
                face = parsing.parse_face_number(words[i + 1])
            i += 2
            continue
        if word == "default":
            default = True
        elif image is None:
            image = words[i]
        else:
            raise BadInput(f"unexpected {words[i]!r} (try /help face)")
        i += 1
    return FaceOptions(image, crop, face, default)


def _split_eq(word: str) -> list[str]:
    key, eq, value = word.partition("=")
    return [key, value] if eq and key.lower() in ("crop", "face") else [word]


def split_face_first(text: str) -> tuple[str | None, str]:
    """``/batch``/``/compare`` text → (a face name candidate, the prompts text after it).

    The candidate is the first line when that line is one word and prompts follow on later
    lines, or the whole text when it is a single word. It is only a candidate: the dispatcher
    takes it as the face when it names one of the caller's saved faces, and as a prompt
    otherwise (``--face NAME`` always names the face).
    """
    lines = text.strip().split("\n")
    first = lines[0].strip()
    one_word = bool(first) and len(first.split()) == 1 and not first.startswith(("--", "—"))
    if one_word and (len(lines) > 1 or " " not in text.strip()):
        return first, "\n".join(lines[1:])
    return None, text


class Dispatcher:
    """Routes ``/command args`` text to the core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._routes: dict[str, Callable[[Caller, str, _Files], Awaitable[Reply]]] = {
            "face": self._face,
            "imagine": lambda c, rest, f: core.imagine(c, rest),
            "batch": self._batch,
            "compare": self._compare,
            "jobs": lambda c, rest, f: core.jobs(c),
            "cancel": lambda c, rest, f: core.cancel(c, rest),
            "settings": lambda c, rest, f: core.settings(c, rest),
            "forget": lambda c, rest, f: core.forget(c),
            "help": lambda c, rest, f: core.help(c, rest or None),
            "start": lambda c, rest, f: core.help(c, None),
            "ban": lambda c, rest, f: core.ban(c, rest),
            "unban": lambda c, rest, f: core.unban(c, rest),
        }

    async def handle(
        self,
        caller: Caller,
        text: str,
        uploads: Sequence[Attachment] = (),
        open_file: FileOpener | None = None,
    ) -> Reply:
        """Run one text command; errors come back as error replies."""
        return await self.core.guard(self._route(caller, text, _Files(uploads, open_file)))

    async def _route(self, caller: Caller, text: str, files: _Files) -> Reply:
        name, rest = parsing.split_command(text)
        route = self._routes.get(name)
        if route is None:
            raise BadInput(f"unknown command /{name} — try /help")
        return await route(caller, rest, files)

    async def _face(self, caller: Caller, rest: str, files: _Files) -> Reply:
        words = parsing.split_args(rest)
        sub = words[0].lower() if words else ""
        if sub not in _FACE_SUBCOMMANDS:
            raise BadInput(f"/face {sub or '…'}: expected one of {', '.join(_FACE_SUBCOMMANDS)}")
        args = words[1:]
        if sub == "list":
            return await self.core.face_list(caller)
        if sub == "import":
            ref, name = (None, _nth(args, 0)) if files.uploads else (_nth(args, 0), _nth(args, 1))
            file = files.get(ref, "a .safetensors face file")
            return await self.core.face_import(caller, file, name)
        name = _need_name(sub, args)
        if sub in ("add", "more"):
            return await self._face_photo(caller, sub, name, args[1:], files)
        method = {
            "show": self.core.face_show,
            "default": self.core.face_default,
            "delete": self.core.face_delete,
            "export": self.core.face_export,
        }[sub]
        return await method(caller, name)

    async def _face_photo(
        self, caller: Caller, sub: str, name: str, words: Sequence[str], files: _Files
    ) -> Reply:
        opts = parse_face_options(words)
        image = files.get(opts.image_ref, "a photo")
        if sub == "more":
            if opts.make_default:
                raise BadInput("/face more does not take 'default' (use /face default NAME)")
            return await self.core.face_more(caller, name, image, crop=opts.crop, face=opts.face)
        return await self.core.face_add(
            caller, name, image, crop=opts.crop, face=opts.face, make_default=opts.make_default
        )

    async def _batch(self, caller: Caller, rest: str, files: _Files) -> Reply:
        face, prompts = await self._face_first(caller, rest)
        return await self.core.batch(caller, prompts, face=face)

    async def _compare(self, caller: Caller, rest: str, files: _Files) -> Reply:
        face, prompts = await self._face_first(caller, rest)
        return await self.core.compare(caller, prompts, face=face)

    async def _face_first(self, caller: Caller, text: str) -> tuple[str | None, str]:
        """The first line as the face when it names one of the caller's faces, else a prompt."""
        name, after = split_face_first(text)
        if name is None or not await self.core.has_face(caller, name):
            return None, text
        return name, after


@dataclass(frozen=True)
class _Files:
    uploads: Sequence[Attachment]
    opener: FileOpener | None

    def get(self, ref: str | None, what: str) -> Attachment:
        """The first upload, else the file the user named, else a clear error."""
        if self.uploads:
            if ref:
                raise BadInput(f"unexpected {ref!r}: the attached file is used")
            return self.uploads[0]
        if ref and self.opener is not None:
            return self.opener(ref)
        raise BadInput(f"attach {what}" + (" or give its path" if self.opener else ""))


def _need_name(sub: str, args: Sequence[str]) -> str:
    if not args:
        raise BadInput(f"/face {sub} needs a face name (see /face list)")
    return parsing.check_name(args[0])


def _nth(args: Sequence[str], i: int) -> str | None:
    return args[i] if len(args) > i else None
