"""Initial registry schema: definitions, versions, lineage, training sets, models, materialization.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Written by hand and frozen: it does not import ``fsql.registry.tables``, so later edits to the tables
cannot change what this revision creates.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
NAME = sa.String(255)
HASH = sa.String(64)


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _lifecycle() -> list[sa.Column]:
    return [_ts("created_at"), _ts("updated_at"), _ts("removed_at", nullable=True)]


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("name", NAME, nullable=False),
        sa.Column("dialect", sa.String(64), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_projects"),
    )
    op.create_table(
        "entities",
        sa.Column("name", NAME, nullable=False),
        sa.Column("keys", JSON, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("fingerprint", HASH, nullable=False),
        *_lifecycle(),
        sa.PrimaryKeyConstraint("name", name="pk_entities"),
    )
    op.create_table(
        "sources",
        sa.Column("name", NAME, nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("fingerprint", HASH, nullable=False),
        *_lifecycle(),
        sa.PrimaryKeyConstraint("name", name="pk_sources"),
    )
    op.create_table(
        "feature_views",
        sa.Column("name", NAME, nullable=False),
        sa.Column("version", HASH, nullable=False),
        sa.Column("fingerprint", HASH, nullable=False),
        sa.Column("entity", NAME, nullable=False),
        sa.Column("owner", NAME, nullable=True),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        *_lifecycle(),
        sa.PrimaryKeyConstraint("name", name="pk_feature_views"),
    )
    op.create_table(
        "view_versions",
        sa.Column("view", NAME, nullable=False),
        sa.Column("version", HASH, nullable=False),
        sa.Column("fingerprint", HASH, nullable=False),
        sa.Column("definition", JSON, nullable=False),
        sa.Column("compiled", JSON, nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("view", "version", name="pk_view_versions"),
        sa.ForeignKeyConstraint(["view"], ["feature_views.name"], name="fk_view_versions_view_feature_views"),
    )
    op.create_table(
        "features",
        sa.Column("view", NAME, nullable=False),
        sa.Column("version", HASH, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("owner", NAME, nullable=True),
        sa.Column("tags", JSON, nullable=False),
        sa.PrimaryKeyConstraint("view", "version", "name", name="pk_features"),
        sa.ForeignKeyConstraint(
            ["view", "version"],
            ["view_versions.view", "view_versions.version"],
            name="fk_features_view_version_view_versions",
        ),
    )
    op.create_table(
        "lineage",
        sa.Column("downstream_kind", sa.String(32), nullable=False),
        sa.Column("downstream_name", NAME, nullable=False),
        sa.Column("downstream_version", HASH, nullable=False),
        sa.Column("downstream_column", NAME, nullable=False),
        sa.Column("upstream_kind", sa.String(32), nullable=False),
        sa.Column("upstream_name", NAME, nullable=False),
        sa.Column("upstream_column", NAME, nullable=False),
        sa.PrimaryKeyConstraint(
            "downstream_kind",
            "downstream_name",
            "downstream_version",
            "downstream_column",
            "upstream_kind",
            "upstream_name",
            "upstream_column",
            name="pk_lineage",
        ),
    )
    op.create_index("ix_lineage_upstream_kind_upstream_name", "lineage", ["upstream_kind", "upstream_name"])
    op.create_table(
        "training_sets",
        sa.Column("name", NAME, nullable=False),
        sa.Column("version", HASH, nullable=False),
        sa.Column("fingerprint", HASH, nullable=False),
        sa.Column("owner", NAME, nullable=True),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        *_lifecycle(),
        sa.PrimaryKeyConstraint("name", name="pk_training_sets"),
    )
    op.create_table(
        "training_set_versions",
        sa.Column("training_set", NAME, nullable=False),
        sa.Column("version", HASH, nullable=False),
        sa.Column("fingerprint", HASH, nullable=False),
        sa.Column("definition", JSON, nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("training_set", "version", name="pk_training_set_versions"),
        sa.ForeignKeyConstraint(
            ["training_set"],
            ["training_sets.name"],
            name="fk_training_set_versions_training_set_training_sets",
        ),
    )
    op.create_table(
        "training_set_features",
        sa.Column("training_set", NAME, nullable=False),
        sa.Column("version", HASH, nullable=False),
        sa.Column("view", NAME, nullable=False),
        sa.Column("feature", NAME, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "training_set", "version", "view", "feature", name="pk_training_set_features"
        ),
        sa.ForeignKeyConstraint(
            ["training_set", "version"],
            ["training_set_versions.training_set", "training_set_versions.version"],
            name="fk_training_set_features_version",
        ),
    )
    op.create_index("ix_training_set_features_view_feature", "training_set_features", ["view", "feature"])
    op.create_table(
        "models",
        sa.Column("name", NAME, nullable=False),
        sa.Column("training_set", NAME, nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("fingerprint", HASH, nullable=False),
        *_lifecycle(),
        sa.PrimaryKeyConstraint("name", name="pk_models"),
    )
    op.create_table(
        "materialization_state",
        sa.Column("view", NAME, nullable=False),
        sa.Column("version", HASH, nullable=False),
        _ts("watermark", nullable=True),
        _ts("last_success_at", nullable=True),
        sa.PrimaryKeyConstraint("view", "version", name="pk_materialization_state"),
        sa.ForeignKeyConstraint(
            ["view", "version"],
            ["view_versions.view", "view_versions.version"],
            name="fk_materialization_state_view_version_view_versions",
        ),
    )
    op.create_table(
        "materialization_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("view", NAME, nullable=False),
        sa.Column("version", HASH, nullable=False),
        _ts("interval_start", nullable=True),
        _ts("interval_end", nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_materialization_runs"),
        sa.ForeignKeyConstraint(
            ["view", "version"],
            ["view_versions.view", "view_versions.version"],
            name="fk_materialization_runs_view_version_view_versions",
        ),
        sa.CheckConstraint(
            "outcome IN ('running', 'success', 'failed')", name="ck_materialization_runs_outcome"
        ),
    )
    op.create_index(
        "ix_materialization_runs_view_version_id", "materialization_runs", ["view", "version", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_materialization_runs_view_version_id", table_name="materialization_runs")
    op.drop_table("materialization_runs")
    op.drop_table("materialization_state")
    op.drop_table("models")
    op.drop_index("ix_training_set_features_view_feature", table_name="training_set_features")
    op.drop_table("training_set_features")
    op.drop_table("training_set_versions")
    op.drop_table("training_sets")
    op.drop_index("ix_lineage_upstream_kind_upstream_name", table_name="lineage")
    op.drop_table("lineage")
    op.drop_table("features")
    op.drop_table("view_versions")
    op.drop_table("feature_views")
    op.drop_table("sources")
    op.drop_table("entities")
    op.drop_table("projects")
