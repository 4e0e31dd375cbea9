"""Where each file source resolved at the last build, and which process runs a materialization.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

``sources.location`` lets a build notice a project that was copied or moved (its sources now resolve
elsewhere) and recreate the views. ``materialization_runs.pid``/``host`` let the next command mark a
run whose process died as failed instead of leaving it 'running' forever. All nullable: rows written
before this revision have neither, and are treated as unknown.

Written by hand and frozen, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("location", sa.Text(), nullable=True))
    with op.batch_alter_table("materialization_runs") as batch:
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("materialization_runs") as batch:
        batch.drop_column("host")
        batch.drop_column("pid")
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("location")
