"""Catalog: definition revisions (history with git commit and verdict) and per-feature statistics.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Written by hand and frozen, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
NAME = sa.String(255)
HASH = sa.String(64)


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "definition_revisions",
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("version", HASH, nullable=False),
        sa.Column("fingerprint", HASH, nullable=False),
        sa.Column("definition", JSON, nullable=False),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("breaking", sa.Boolean(), nullable=False),
        sa.Column("reasons", JSON, nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("kind", "name", "revision", name="pk_definition_revisions"),
    )
    op.create_table(
        "feature_stats",
        sa.Column("view", NAME, nullable=False),
        sa.Column("version", HASH, nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("feature", NAME, nullable=False),
        _ts("as_of"),
        _ts("computed_at"),
        sa.Column("stats", JSON, nullable=False),
        sa.PrimaryKeyConstraint("view", "version", "scope", "feature", name="pk_feature_stats"),
        sa.ForeignKeyConstraint(
            ["view", "version"],
            ["view_versions.view", "view_versions.version"],
            name="fk_feature_stats_view_version_view_versions",
        ),
        sa.CheckConstraint("scope IN ('history', 'latest')", name="ck_feature_stats_scope"),
    )


def downgrade() -> None:
    op.drop_table("feature_stats")
    op.drop_table("definition_revisions")
