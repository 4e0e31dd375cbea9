"""Registry tables (SQLAlchemy Core).

Definitions are one row per object plus one row per version (``version = fingerprint[:12]``); versions
are never deleted, and a removed view keeps its row with ``removed_at`` set so its history stays
queryable. Materialization state lives in its own tables keyed by (view, version), which a build never
writes: a new version starts with no state and an old version's watermark survives re-applies.

This module is the target of the Alembic migrations in ``migrations/``. Changing a table here needs a new
migration; ``tests/test_registry.py`` checks that the migrated schema matches these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

# Deterministic constraint names, so later migrations can refer to them on every backend (SQLite's
# batch mode needs names to drop or alter constraints).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that always comes back tz-aware in UTC.

    SQLite has no time zone support, so values are stored there as naive UTC text (fixed width, so text
    comparison orders instants correctly, which the conditional watermark update relies on). Naive
    inputs are taken to be UTC, the convention of every engine session fsql opens.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL so stored documents can be indexed and compared by anyone querying the registry.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

NAME = sa.String(255)
HASH = sa.String(64)


def _lifecycle() -> list[sa.Column[Any]]:
    return [
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("removed_at", UTCDateTime(), nullable=True),
    ]


projects = sa.Table(
    "projects",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("dialect", sa.String(64), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

entities = sa.Table(
    "entities",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("keys", JSONType, nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("fingerprint", HASH, nullable=False),
    *_lifecycle(),
)

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("spec", JSONType, nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("fingerprint", HASH, nullable=False),
    # The absolute path a file source resolved to at the last build: a copied or moved project
    # resolves it elsewhere, which the next build reports and acts on.
    sa.Column("location", sa.Text(), nullable=True),
    *_lifecycle(),
)

feature_views = sa.Table(
    "feature_views",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("version", HASH, nullable=False),  # the current version
    sa.Column("fingerprint", HASH, nullable=False),
    sa.Column("entity", NAME, nullable=False),
    sa.Column("owner", NAME, nullable=True),
    sa.Column("tags", JSONType, nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("line", sa.Integer(), nullable=False),
    *_lifecycle(),
)

view_versions = sa.Table(
    "view_versions",
    metadata,
    sa.Column("view", NAME, sa.ForeignKey("feature_views.name"), primary_key=True),
    sa.Column("version", HASH, primary_key=True),
    sa.Column("fingerprint", HASH, nullable=False),
    sa.Column("definition", JSONType, nullable=False),  # the full FeatureView
    sa.Column("compiled", JSONType, nullable=False),  # {dialect: sql}
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

features = sa.Table(
    "features",
    metadata,
    sa.Column("view", NAME, primary_key=True),
    sa.Column("version", HASH, primary_key=True),
    sa.Column("name", NAME, primary_key=True),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("dtype", sa.String(255), nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("owner", NAME, nullable=True),
    sa.Column("tags", JSONType, nullable=False),
    sa.ForeignKeyConstraint(["view", "version"], ["view_versions.view", "view_versions.version"]),
)

# Column-level lineage. An empty string column means "the whole relation" (table-level edge); it is not
# NULL so that the natural primary key makes every edge unique on every backend.
lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("downstream_kind", sa.String(32), primary_key=True),
    sa.Column("downstream_name", NAME, primary_key=True),
    sa.Column("downstream_version", HASH, primary_key=True),
    sa.Column("downstream_column", NAME, primary_key=True),
    sa.Column("upstream_kind", sa.String(32), primary_key=True),
    sa.Column("upstream_name", NAME, primary_key=True),
    sa.Column("upstream_column", NAME, primary_key=True),
    sa.Index(None, "upstream_kind", "upstream_name"),
)

training_sets = sa.Table(
    "training_sets",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("version", HASH, nullable=False),
    sa.Column("fingerprint", HASH, nullable=False),
    sa.Column("owner", NAME, nullable=True),
    sa.Column("tags", JSONType, nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("line", sa.Integer(), nullable=False),
    *_lifecycle(),
)

training_set_versions = sa.Table(
    "training_set_versions",
    metadata,
    sa.Column("training_set", NAME, sa.ForeignKey("training_sets.name"), primary_key=True),
    sa.Column("version", HASH, primary_key=True),
    sa.Column("fingerprint", HASH, nullable=False),
    sa.Column("definition", JSONType, nullable=False),  # the full TrainingSet
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# Downstream lineage of features: which training-set versions use which view features.
training_set_features = sa.Table(
    "training_set_features",
    metadata,
    sa.Column("training_set", NAME, primary_key=True),
    sa.Column("version", HASH, primary_key=True),
    sa.Column("view", NAME, primary_key=True),
    sa.Column("feature", NAME, primary_key=True),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(
        ["training_set", "version"],
        ["training_set_versions.training_set", "training_set_versions.version"],
        name="fk_training_set_features_version",  # the conventional name exceeds PostgreSQL's 63
    ),
    sa.Index(None, "view", "feature"),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("training_set", NAME, nullable=False),
    sa.Column("spec", JSONType, nullable=False),
    sa.Column("fingerprint", HASH, nullable=False),
    *_lifecycle(),
)

materialization_state = sa.Table(
    "materialization_state",
    metadata,
    sa.Column("view", NAME, primary_key=True),
    sa.Column("version", HASH, primary_key=True),
    sa.Column("watermark", UTCDateTime(), nullable=True),
    sa.Column("last_success_at", UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(["view", "version"], ["view_versions.view", "view_versions.version"]),
)

RUN_OUTCOMES = ("running", "success", "failed")

materialization_runs = sa.Table(
    "materialization_runs",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("view", NAME, nullable=False),
    sa.Column("version", HASH, nullable=False),
    sa.Column("interval_start", UTCDateTime(), nullable=True),
    sa.Column("interval_end", UTCDateTime(), nullable=True),
    sa.Column("rows", sa.BigInteger(), nullable=True),
    sa.Column("duration_s", sa.Float(), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    # The process that runs it, so a later command can tell a run whose process died from a live one.
    sa.Column("pid", sa.Integer(), nullable=True),
    sa.Column("host", NAME, nullable=True),
    sa.ForeignKeyConstraint(["view", "version"], ["view_versions.view", "view_versions.version"]),
    sa.CheckConstraint("outcome IN ('running', 'success', 'failed')", name="outcome"),
    sa.Index(None, "view", "version", "id"),
)

# Every distinct state of a view's or training set's definition, in build order. A version (the content
# fingerprint) can have several revisions when only metadata changed (owner, tags, descriptions, path), so
# the catalog's history shows those edits too; `breaking` and `reasons` compare with the previous revision.
definition_revisions = sa.Table(
    "definition_revisions",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("name", NAME, primary_key=True),
    sa.Column("revision", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("version", HASH, nullable=False),
    sa.Column("fingerprint", HASH, nullable=False),
    sa.Column("definition", JSONType, nullable=False),
    sa.Column("git_commit", sa.String(64), nullable=True),
    sa.Column("breaking", sa.Boolean(), nullable=False),
    sa.Column("reasons", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# Per-feature statistics of one view version, computed in the engine; one row per (view, version, scope,
# feature), replaced on refresh. `as_of` is the time the numbers describe, `computed_at` when they were made.
feature_stats = sa.Table(
    "feature_stats",
    metadata,
    sa.Column("view", NAME, primary_key=True),
    sa.Column("version", HASH, primary_key=True),
    sa.Column("scope", sa.String(16), primary_key=True),
    sa.Column("feature", NAME, primary_key=True),
    sa.Column("as_of", UTCDateTime(), nullable=False),
    sa.Column("computed_at", UTCDateTime(), nullable=False),
    sa.Column("stats", JSONType, nullable=False),
    sa.ForeignKeyConstraint(["view", "version"], ["view_versions.view", "view_versions.version"]),
    sa.CheckConstraint("scope IN ('history', 'latest')", name="scope"),
)

# The shape of one view version's history (rows, entities, events per entity, event-time span, ties),
# measured at build and materialize; training sets choose their PIT join plan per view from it.
view_shapes = sa.Table(
    "view_shapes",
    metadata,
    sa.Column("view", NAME, primary_key=True),
    sa.Column("version", HASH, primary_key=True),
    sa.Column("computed_at", UTCDateTime(), nullable=False),
    sa.Column("shape", JSONType, nullable=False),
    sa.ForeignKeyConstraint(["view", "version"], ["view_versions.view", "view_versions.version"]),
)

ALL_TABLES: tuple[sa.Table, ...] = tuple(metadata.sorted_tables)
