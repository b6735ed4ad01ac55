"""Jobs carry a machine-readable refusal (storage.schemas.Refusal) next to the user's message.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("refusal", sa.String(32), nullable=True))
    op.add_column("jobs", sa.Column("faces_found", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "faces_found")  # SQLite ≥ 3.35 drops a plain column in place
    op.drop_column("jobs", "refusal")
