"""Initial schema: users, identities, jobs, results, workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = "'queued', 'running', 'done', 'failed', 'cancelled'"


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    _users()
    _workers()
    _identities()
    _jobs()
    _results()


def _users() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("platform_user_id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(128), nullable=True),
        sa.Column("settings", _json(), nullable=False),
        _ts("consent_at", nullable=True),
        sa.Column("banned", sa.Boolean(), nullable=False),
        sa.Column("jobs_total", sa.Integer(), nullable=False),
        sa.Column("images_total", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.UniqueConstraint("platform", "platform_user_id", name="uq_users_platform_id"),
    )


def _workers() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("preset", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("current_job_id", sa.Integer(), nullable=True),
        _ts("started_at"),
        _ts("ready_at", nullable=True),
        _ts("heartbeat_at"),
    )


def _identities() -> None:
    op.create_table(
        "identities",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "owner_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("arcface", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("n_refs", sa.Integer(), nullable=False),
        sa.Column("thumbnail", sa.LargeBinary(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
    )
    op.create_index(
        "uq_identities_owner_name", "identities", ["owner_id", sa.text("lower(name)")], unique=True
    )
    op.create_index(
        "uq_identities_owner_default",
        "identities",
        ["owner_id"],
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    )


def _jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "owner_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("input_blob", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        _ts("lease_expires", nullable=True),
        sa.Column("progress_step", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error_user", sa.Text(), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("delivery_platform", sa.String(32), nullable=True),
        sa.Column("delivery_channel", sa.String(64), nullable=True),
        sa.Column("delivery_message", sa.String(256), nullable=True),
        sa.Column("delivery_extra", _json(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.CheckConstraint(f"state IN ({STATES})", name="ck_jobs_state"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_jobs_state_owner_created", "jobs", ["state", "owner_id", "created_at"])
    op.create_index("ix_jobs_owner_created", "jobs", ["owner_id", "created_at"])
    op.create_index("ix_jobs_owner_started", "jobs", ["owner_id", "started_at"])
    op.create_index("ix_jobs_state_lease", "jobs", ["state", "lease_expires"])
    op.create_index("ix_jobs_delivered_finished", "jobs", ["delivered", "finished_at"])


def _results() -> None:
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("identity_score", sa.Float(), nullable=True),
        _ts("created_at"),
        sa.UniqueConstraint("job_id", "kind", "index", name="uq_results_job_kind_index"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_results_created", "results", ["created_at"])


def downgrade() -> None:
    for table in ("results", "jobs", "identities", "workers", "users"):
        op.drop_table(table)
