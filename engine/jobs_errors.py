"""How a job's exception becomes a failure: a one-line message for the user, a detail for the log.

Refusals (no face, several faces, a face encoded by other weights, bad settings) and storage
errors carry their own user message. Out-of-memory errors, CUDA or CPU, are recognised by type
and by the allocators' messages, so the worker can free memory and carry on. Anything else is a
bug: the user gets a generic line, the log gets the traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.faces_choice import FaceError
from engine.identity import FingerprintMismatch, IdentityInputError
from engine.images import ImageError
from engine.pipeline import PipelineInputError
from engine.presets import EngineOutOfMemory
from storage.errors import StorageError
from storage.schemas import ParamsError

INTERNAL = "Something went wrong in the engine; the error was logged. Please try again later."
OUT_OF_MEMORY = "The engine ran out of memory on this job; try a smaller size or fewer prompts."
SHUTDOWN = "The worker stopped before your job finished; please send it again."
#: Substrings of the allocators' messages (PyTorch CPU/CUDA, cuBLAS/cuDNN, ONNX Runtime).
OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "cublas_status_alloc_failed",
    "failed to allocate memory",
)


class JobRefused(Exception):
    """The job cannot be done as asked; ``user_message`` says why, ``preview`` may show it."""

    def __init__(self, user_message: str, *, preview: bytes | None = None) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.preview = preview or None


@dataclass(frozen=True)
class Failure:
    """A job's failure as the worker reports it."""

    user_message: str
    detail: str
    out_of_memory: bool = False
    unexpected: bool = False


def sentence(text: str) -> str:
    """One line, capitalised, ending with a full stop (for messages built from exceptions)."""
    line = " ".join(str(text).split())
    if not line:
        return INTERNAL
    line = line[0].upper() + line[1:]
    return line if line.endswith((".", "!", "?")) else line + "."


def is_out_of_memory(exc: BaseException) -> bool:
    """A device or host allocation failure, whatever layer raised it."""
    if isinstance(exc, EngineOutOfMemory | torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MARKERS)


def _detail(exc: BaseException) -> str:
    """``Type: message``, followed by the cause's, for the log and the job's error detail."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    return text if cause is None else f"{text} (from {type(cause).__name__}: {cause})"


def describe(exc: BaseException) -> Failure:
    """The user message and log detail of a job that raised ``exc``."""
    detail = _detail(exc)
    if isinstance(exc, JobRefused | StorageError | FaceError | ImageError):
        return Failure(exc.user_message, detail)
    if is_out_of_memory(exc):
        message = sentence(str(exc)) if isinstance(exc, EngineOutOfMemory) else OUT_OF_MEMORY
        return Failure(message, detail, out_of_memory=True)
    if isinstance(exc, PipelineInputError | ParamsError):
        return Failure(sentence(f"Invalid settings: {exc}"), detail)
    if isinstance(exc, FingerprintMismatch | IdentityInputError):
        return Failure(sentence(str(exc)), detail)
    return Failure(INTERNAL, detail, unexpected=True)
