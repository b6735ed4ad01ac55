"""How a job's exception becomes a failure: a one-line message for the user, a detail for the log.

Refusals (no face, several faces, a face encoded by other weights, bad settings) and storage
errors carry their own user message; the engine's refusals also carry a machine-readable
:class:`~storage.schemas.Refusal` (several faces: how many), stored with the failure, so the
bot never reads the message to offer a face choice. Out-of-memory errors, CUDA or CPU, are
recognised by type and by the allocators' messages (engine.presets), so the worker can free
memory and carry on; the engine's own calls already say whether the GPU or the machine ran out.
Anything else is a bug: the user gets a generic line, the log gets the traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.faces_choice import (
    BadCropError,
    BadFaceIndexError,
    FaceError,
    FaceTooSmallError,
    MultipleFacesError,
    NoFaceError,
)
from engine.identity import FingerprintMismatch, IdentityInputError
from engine.images import ImageError
from engine.memory import MemoryPlan
from engine.pipeline import PipelineInputError
from engine.presets import EngineOutOfMemory, is_out_of_memory, out_of_memory_message
from storage.errors import StorageError
from storage.schemas import ParamsError, Refusal, RefusalCode

INTERNAL = "Something went wrong in the engine; the error was logged. Please try again later."
#: An allocation failure on an unknown device (the worker names the GPU or the machine).
OUT_OF_MEMORY = "The worker ran out of memory on this job; try a smaller size."


class JobRefused(Exception):
    """The job cannot be done as asked; ``user_message`` says why, ``preview`` may show it,
    ``note`` may explain it (kept as the job's note, e.g. a weaker face detector) and
    ``refusal`` says it in machine-readable form (by default that of the engine error the
    refusal was raised from, see :func:`refusal_of`)."""

    def __init__(
        self,
        user_message: str,
        *,
        preview: bytes | None = None,
        note: str | None = None,
        refusal: Refusal | None = None,
    ) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.preview = preview or None
        self.note = note or None
        self.refusal = refusal


@dataclass(frozen=True)
class Failure:
    """A job's failure as the worker reports it (``refusal`` and ``preview``: an engine refusal,
    stored with the failure)."""

    user_message: str
    detail: str
    out_of_memory: bool = False
    unexpected: bool = False
    note: str | None = None
    refusal: Refusal | None = None
    preview: bytes | None = None


_CODES: tuple[tuple[type[Exception], RefusalCode], ...] = (
    (MultipleFacesError, RefusalCode.SEVERAL_FACES),
    (FaceTooSmallError, RefusalCode.FACE_TOO_SMALL),
    (BadCropError, RefusalCode.BAD_CROP),
    (BadFaceIndexError, RefusalCode.BAD_FACE_INDEX),
    (NoFaceError, RefusalCode.NO_FACE),
    (FaceError, RefusalCode.NO_FACE),  # no usable face, e.g. one that cannot be aligned
    (ImageError, RefusalCode.BAD_IMAGE),
    (FingerprintMismatch, RefusalCode.OTHER_WEIGHTS),
)


def refusal_of(exc: BaseException | None) -> Refusal | None:
    """The machine-readable refusal of an engine error (None for anything else)."""
    if isinstance(exc, JobRefused):
        return exc.refusal or refusal_of(exc.__cause__)
    code = next((code for kind, code in _CODES if isinstance(exc, kind)), None)
    if code is None:
        return None
    faces = exc.count if isinstance(exc, MultipleFacesError) else None
    return Refusal(code=code, faces=faces)


def sentence(text: str) -> str:
    """One line, capitalised, ending with a full stop (for messages built from exceptions)."""
    line = " ".join(str(text).split())
    if not line:
        return INTERNAL
    line = line[0].upper() + line[1:]
    return line if line.endswith((".", "!", "?")) else line + "."


def _detail(exc: BaseException) -> str:
    """``Type: message``, followed by the cause's, for the log and the job's error detail."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    return text if cause is None else f"{text} (from {type(cause).__name__}: {cause})"


def describe(exc: BaseException, memory: MemoryPlan | None = None) -> Failure:
    """The user message and log detail of a job that raised ``exc`` on ``memory``'s device."""
    detail = _detail(exc)
    if isinstance(exc, JobRefused):
        return Failure(
            exc.user_message, detail, note=exc.note, refusal=refusal_of(exc), preview=exc.preview
        )
    if isinstance(exc, FaceError | ImageError):
        return Failure(exc.user_message, detail, refusal=refusal_of(exc))
    if isinstance(exc, StorageError):
        return Failure(exc.user_message, detail)
    if is_out_of_memory(exc):
        return Failure(_out_of_memory(exc, memory), detail, out_of_memory=True)
    if isinstance(exc, PipelineInputError | ParamsError):
        return Failure(sentence(f"Invalid settings: {exc}"), detail)
    if isinstance(exc, FingerprintMismatch | IdentityInputError):
        return Failure(sentence(str(exc)), detail, refusal=refusal_of(exc))
    return Failure(INTERNAL, detail, unexpected=True)


def _out_of_memory(exc: BaseException, memory: MemoryPlan | None) -> str:
    if isinstance(exc, EngineOutOfMemory):
        return exc.user_message
    return OUT_OF_MEMORY if memory is None else out_of_memory_message(exc, memory)
