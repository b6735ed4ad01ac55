"""The typed contract between bot and engine: job kinds, states and parameters.

Parameters are pydantic models, validated before a job is inserted and serialised as JSON
with a version number (never pickled). The worker parses them back with :func:`load_params`.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PARAMS_VERSION = 1

#: Identity names: 1–32 letters, digits, ``-`` or ``_``.
IDENTITY_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"


class JobKind(enum.StrEnum):
    """What a job does."""

    FACE = "face"
    IMAGINE = "imagine"
    BATCH = "batch"
    COMPARE = "compare"


class JobState(enum.StrEnum):
    """A job's life: queued → running → done | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class ResultKind(enum.StrEnum):
    """What a stored result image is: a final image, a compare grid, or a preview (of progress,
    or of the faces a refused face job found, numbered)."""

    IMAGE = "image"
    GRID = "grid"
    PREVIEW = "preview"


class WorkerState(enum.StrEnum):
    """A worker's readiness as it reports it."""

    STARTING = "starting"
    READY = "ready"
    STOPPED = "stopped"


class FaceMode(enum.StrEnum):
    """``add`` creates a new identity, ``more`` adds a reference photo to an existing one."""

    ADD = "add"
    MORE = "more"


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RefusalCode(enum.StrEnum):
    """Why the engine refused a job as asked (stored as ``jobs.refusal``)."""

    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    FACE_TOO_SMALL = "face_too_small"
    BAD_CROP = "bad_crop"
    BAD_FACE_INDEX = "bad_face_index"
    BAD_IMAGE = "bad_image"
    OTHER_WEIGHTS = "other_weights"


class Refusal(_Params):
    """A job the engine refused, in machine-readable form, stored with its failure.

    A refused job ends FAILED, not DONE: nothing was made, so /jobs, the queue's counters and
    the user's image count treat it as the failure it is, and the user reads the one-line
    ``error_user``. The refusal itself (``jobs.refusal`` and ``jobs.faces_found``, migration
    0003) is what adapters act on — never the English of the message. A numbered preview of the
    faces found, when the engine drew one, is the failed job's result of kind PREVIEW, written
    in the same transaction as the failure (storage.leases.fail) and shown on delivery.
    ``SEVERAL_FACES`` carries how many faces were found: the job keeps its upload so that a
    face button (1…``faces``) can re-run it (storage.jobs.enqueue ``input_from``).
    """

    code: RefusalCode
    faces: int | None = Field(default=None, ge=0, le=10_000)

    @model_validator(mode="after")
    def _counted(self) -> Refusal:
        if self.code is RefusalCode.SEVERAL_FACES and (self.faces is None or self.faces < 2):
            raise ValueError("a several-faces refusal needs the number of faces found (≥ 2)")
        return self

    @property
    def face_choice(self) -> int | None:
        """The number of faces to choose from, for a several-faces refusal; else None."""
        return self.faces if self.code is RefusalCode.SEVERAL_FACES else None


class CropBox(_Params):
    """A crop box in pixels of the upload, or in fractions 0–1 when ``relative``."""

    x: float = Field(ge=0)
    y: float = Field(ge=0)
    w: float = Field(gt=0)
    h: float = Field(gt=0)
    relative: bool = False

    @field_validator("x", "y", "w", "h")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("crop values must be finite numbers")
        return v


class FaceParams(_Params):
    """Detect, choose and encode a face; save it as identity ``name``.

    The uploaded image bytes travel in the job's ``input_blob`` column, not here.
    """

    kind: Literal[JobKind.FACE] = JobKind.FACE
    mode: FaceMode = FaceMode.ADD
    name: str = Field(pattern=IDENTITY_NAME_PATTERN)
    crop: CropBox | None = None
    face_index: int | None = Field(default=None, ge=1, description="1-based, left to right")
    make_default: bool = False


class GenerationSettings(_Params):
    """Sampling settings shared by imagine, batch and compare (official app defaults)."""

    width: int = Field(default=896, ge=256, le=2048, multiple_of=16)
    height: int = Field(default=1152, ge=256, le=2048, multiple_of=16)
    steps: int = Field(default=28, ge=1, le=50)
    guidance: float = Field(default=4.0, ge=1.0, le=10.0)
    id_weight: float = Field(default=1.0, ge=0.0, le=3.0)
    start_step: int = Field(default=0, ge=0, le=50)
    true_cfg: float = Field(default=1.0, ge=1.0, le=10.0)
    cfg_start_step: int = Field(default=1, ge=0, le=50)
    negative_prompt: str = Field(
        default="bad quality, worst quality, text, signature, watermark, extra limbs",
        max_length=1000,
    )
    max_sequence_length: int = Field(default=128, ge=128, le=512, multiple_of=128)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="None = random")


class ImagineParams(_Params):
    """One image of an identity."""

    kind: Literal[JobKind.IMAGINE] = JobKind.IMAGINE
    identity_id: int
    prompt: str = Field(min_length=1, max_length=2000)
    settings: GenerationSettings = GenerationSettings()


class BatchParams(_Params):
    """One image per prompt, the identity encoded once."""

    kind: Literal[JobKind.BATCH] = JobKind.BATCH
    identity_id: int
    prompts: list[str] = Field(min_length=1, max_length=100)
    settings: GenerationSettings = GenerationSettings()


class CompareParams(_Params):
    """The identity across a diverse prompt set; empty ``prompts`` = the built-in set."""

    kind: Literal[JobKind.COMPARE] = JobKind.COMPARE
    identity_id: int
    prompts: list[str] = Field(default_factory=list, max_length=100)
    settings: GenerationSettings = GenerationSettings()


JobParams = Annotated[
    FaceParams | ImagineParams | BatchParams | CompareParams, Field(discriminator="kind")
]


class _Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    v: int
    params: JobParams


class ParamsError(ValueError):
    """Job parameters that cannot be parsed or validated."""


def dump_params(params: FaceParams | ImagineParams | BatchParams | CompareParams) -> str:
    """Serialise parameters as versioned JSON."""
    return json.dumps({"v": PARAMS_VERSION, "params": params.model_dump(mode="json")})


def _first_error(exc: ValidationError) -> str:
    """The first validation error with where it is (``params.prompt: …``)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def load_params(
    text: str | dict[str, Any],
) -> FaceParams | ImagineParams | BatchParams | CompareParams:
    """Parse versioned JSON back into typed parameters (ParamsError when they do not parse)."""
    try:
        env = _Envelope.model_validate(json.loads(text) if isinstance(text, str) else text)
    except json.JSONDecodeError as exc:
        raise ParamsError(f"job parameters are not JSON: {exc}") from exc
    except ValidationError as exc:
        raise ParamsError(f"invalid job parameters: {_first_error(exc)}") from exc
    if env.v != PARAMS_VERSION:
        raise ParamsError(
            f"job parameters version {env.v} is not supported (want {PARAMS_VERSION})"
        )
    return env.params


class Delivery(_Params):
    """Where a job's answer goes: platform, channel and the message/interaction to edit."""

    platform: str = Field(min_length=1, max_length=32)
    channel_id: str | None = Field(default=None, max_length=64)
    message_ref: str | None = Field(default=None, max_length=256)
    extra: dict[str, str] = Field(default_factory=dict)
