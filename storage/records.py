"""Plain, frozen records the storage API returns (never live ORM objects).

UserRecord · IdentitySummary · IdentityRecord · JobRecord · Enqueued · ResultData ·
IdentityWrite · ResultRecord · WorkerRecord · RequeueReport · PruneReport · ErasedCounts
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from storage import models
from storage.schemas import (
    BatchParams,
    CompareParams,
    Delivery,
    FaceMode,
    FaceParams,
    ImagineParams,
    JobKind,
    JobState,
    ParamsError,
    Refusal,
    ResultKind,
    WorkerState,
    load_params,
)

Params = FaceParams | ImagineParams | BatchParams | CompareParams

#: ``error_detail`` of a face request held for its owner's consent (storage.job_holds).
HELD_DETAIL = "held: waiting for the owner's consent"


@dataclass(frozen=True)
class UserRecord:
    id: int
    platform: str
    platform_user_id: str
    display_name: str | None
    settings: dict[str, Any]
    consent_at: datetime | None
    banned: bool
    jobs_total: int
    images_total: int
    created_at: datetime

    @classmethod
    def of(cls, row: models.User) -> UserRecord:
        return cls(
            id=row.id,
            platform=row.platform,
            platform_user_id=row.platform_user_id,
            display_name=row.display_name,
            settings=dict(row.settings or {}),
            consent_at=row.consent_at,
            banned=row.banned,
            jobs_total=row.jobs_total,
            images_total=row.images_total,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class IdentitySummary:
    """An identity without its large blobs (for lists)."""

    id: int
    owner_id: int
    name: str
    is_default: bool
    fingerprint: str
    n_refs: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class IdentityRecord(IdentitySummary):
    """An identity with its embedding (safetensors bytes), ArcFace vector and thumbnail."""

    embedding: bytes = b""
    arcface: bytes = b""
    thumbnail: bytes | None = None

    @classmethod
    def of(cls, row: models.Identity) -> IdentityRecord:
        return cls(
            embedding=row.embedding,
            arcface=row.arcface,
            thumbnail=row.thumbnail,
            **_summary_fields(row),
        )

    def summary(self) -> IdentitySummary:
        return IdentitySummary(
            **{k: getattr(self, k) for k in IdentitySummary.__dataclass_fields__}
        )


def _summary_fields(row: models.Identity) -> dict[str, Any]:
    return {k: getattr(row, k) for k in IdentitySummary.__dataclass_fields__}


def identity_summary(row: models.Identity) -> IdentitySummary:
    return IdentitySummary(**_summary_fields(row))


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one job. ``input_blob`` is only loaded by claim and get_job.

    ``params`` is None when the stored parameters cannot be read (written by another version,
    or damaged): such a job is failed by claim and never reaches a worker, but reads still
    return it so that its failure can be delivered. ``note`` is the worker's one-line summary
    for the user (scores, quality notes), set by finish or fail. ``refusal`` says, in machine-
    readable form, why the engine refused a failed job (several faces and how many, no face…);
    None otherwise, or when a newer version wrote a code this one does not know.
    """

    id: int
    owner_id: int
    kind: JobKind
    params: Params | None
    state: JobState
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires: datetime | None
    progress_step: int
    progress_total: int
    cancel_requested: bool
    error_user: str | None
    error_detail: str | None
    note: str | None
    refusal: Refusal | None
    delivery: Delivery | None
    delivered: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    input_blob: bytes | None = None

    @classmethod
    def of(cls, row: Any, *, with_input: bool = False, strict: bool = False) -> JobRecord:
        """From an ORM ``Job`` or a Core row of the jobs table.

        Unreadable parameters give ``params=None``, or raise ParamsError when ``strict``.
        """
        return cls(
            id=row.id,
            owner_id=row.owner_id,
            kind=JobKind(row.kind),
            params=_params(row, strict),
            state=JobState(row.state),
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            lease_owner=row.lease_owner,
            lease_expires=row.lease_expires,
            progress_step=row.progress_step,
            progress_total=row.progress_total,
            cancel_requested=row.cancel_requested,
            error_user=row.error_user,
            error_detail=row.error_detail,
            note=row.note,
            refusal=_refusal(row),
            delivery=_delivery(row),
            delivered=row.delivered,
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            input_blob=row.input_blob if with_input else None,
        )

    @property
    def held(self) -> bool:
        """A face request waiting for its owner's consent, not a job that ran."""
        return self.state is JobState.CANCELLED and self.error_detail == HELD_DETAIL


def _params(row: Any, strict: bool) -> Params | None:
    try:
        params = load_params(row.params)
        if params.kind != row.kind:
            raise ParamsError(f"parameters of a {params.kind} job in a {row.kind} job")
    except ParamsError:
        if strict:
            raise
        return None
    return params


def _refusal(row: Any) -> Refusal | None:
    if row.refusal is None:
        return None
    try:
        return Refusal(code=row.refusal, faces=row.faces_found)
    except ValidationError:  # a code this version does not know
        return None


def _delivery(row: Any) -> Delivery | None:
    if row.delivery_platform is None:
        return None
    return Delivery(
        platform=row.delivery_platform,
        channel_id=row.delivery_channel,
        message_ref=row.delivery_message,
        extra=dict(row.delivery_extra or {}),
    )


@dataclass(frozen=True)
class Enqueued:
    """The receipt of :func:`storage.jobs.enqueue`: job id and 1-based queue position."""

    job_id: int
    position: int


@dataclass(frozen=True)
class ResultData:
    """One output a worker hands to :func:`storage.jobs.finish`."""

    index: int
    png: bytes
    seed: int | None = None
    prompt: str | None = None
    identity_score: float | None = None
    kind: ResultKind = ResultKind.IMAGE


@dataclass(frozen=True)
class IdentityWrite:
    """The face a face job saves, written by :func:`storage.jobs.finish` with the job's results.

    ``mode`` ADD saves a new face ``name`` (the owner's first becomes their default); MORE
    appends the references in ``embedding`` (safetensors bytes, storage.embeddings.pack) to
    the owner's face ``name``. ``make_default`` makes it the default either way.
    """

    name: str
    embedding: bytes
    mode: FaceMode = FaceMode.ADD
    thumbnail: bytes | None = None
    make_default: bool = False


@dataclass(frozen=True)
class ResultRecord:
    id: int
    job_id: int
    index: int
    kind: ResultKind
    png: bytes
    seed: int | None
    prompt: str | None
    identity_score: float | None
    created_at: datetime

    @classmethod
    def of(cls, row: models.Result) -> ResultRecord:
        return cls(
            id=row.id,
            job_id=row.job_id,
            index=row.index,
            kind=ResultKind(row.kind),
            png=row.png,
            seed=row.seed,
            prompt=row.prompt,
            identity_score=row.identity_score,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    host: str
    device: str
    preset: str
    fingerprint: str | None
    pid: int | None
    state: WorkerState
    current_job_id: int | None
    started_at: datetime
    ready_at: datetime | None
    heartbeat_at: datetime

    @classmethod
    def of(cls, row: models.Worker) -> WorkerRecord:
        fields = {k: getattr(row, k) for k in cls.__dataclass_fields__ if k != "state"}
        return cls(state=WorkerState(row.state), **fields)


@dataclass(frozen=True)
class RequeueReport:
    """What :func:`storage.jobs.requeue_expired` did, by job id."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class PruneReport:
    jobs: int
    results: int


@dataclass(frozen=True)
class ErasedCounts:
    """Rows removed by :func:`storage.users.erase_user`."""

    identities: int
    jobs: int
    results: int
    users: int
