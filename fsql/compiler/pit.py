"""The canonical point-in-time (PIT) plan. INTERFACE STUB: to be implemented.

See DESIGN.md section 3 for the six rules. This module is pure: definitions in, sqlglot trees out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlglot import exp

from fsql.definitions import PitMode


@dataclass(frozen=True)
class PitView:
    """One feature view as the PIT plan sees it."""

    name: str  # the view's name, used to derive aliases
    relation: exp.Expression  # a table (or subquery) holding the view's full history
    keys: tuple[str, ...]  # entity key columns of the view
    timestamp: str  # event timestamp column of the view
    created: str | None  # known-at column, or None
    ttl: timedelta | None
    # (column in the view, output column name in the training set)
    features: tuple[tuple[str, str], ...]
    # spine columns matched to `keys`, position by position; defaults to the same names
    spine_keys: tuple[str, ...] | None = None


def compile_pit(
    spine: exp.Expression,
    spine_columns: Sequence[str],
    spine_timestamp: str,
    views: Sequence[PitView],
    *,
    dialect: str,
    mode: PitMode = "known-at",
    ordinal: str | None = None,
) -> exp.Query:
    """The training-set query: spine columns first (unchanged, in spine order), then features."""
    raise NotImplementedError


def latest_per_entity(
    view: PitView,
    *,
    dialect: str,
    mode: PitMode = "known-at",
    as_of: exp.Expression | None = None,
    apply_ttl: bool = True,
) -> exp.Query:
    """One row per entity: the row the PIT join would pick for a spine row (keys, as_of)."""
    raise NotImplementedError
