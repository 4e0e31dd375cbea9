"""PIT plan statistics: the shape of each view version's history (rows, entities, events per entity,
event-time span, tied event times), which training sets read to choose a join plan per view.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

Written by hand and frozen, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "view_shapes",
        sa.Column("view", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("shape", JSON, nullable=False),
        sa.PrimaryKeyConstraint("view", "version", name="pk_view_shapes"),
        sa.ForeignKeyConstraint(
            ["view", "version"],
            ["view_versions.view", "view_versions.version"],
            name="fk_view_shapes_view_version_view_versions",
        ),
    )


def downgrade() -> None:
    op.drop_table("view_shapes")
