"""The one diff between a project's definitions and what the registry holds.

`fsql plan` and `fsql build` both report this list, computed from fully resolved definitions (column
types included), so what plan announces is what build does. A change is one of:

- ``added`` / ``removed``: the object appears or disappears (a removal is breaking);
- ``changed``: a new version (the content fingerprint moved), breaking when something a consumer
  relies on disappeared or changed meaning (a column removed or retyped, keys or timing changed);
- ``updated``: the same version with new metadata (owner, tags, descriptions): always compatible;
- ``unchanged``.

A file source that resolves to another file than at the last build (the project was copied or moved)
is a ``source`` change ``updated``: build recreates the views so they read the files found now, and
forgets the watermarks of the views reading it (the online store holds values computed from the other
files), so the next materialization recomputes them.

Each change also lists its columns with a verdict (``column_changes``): a removed or retyped column is
breaking, an added column or new description compatible, and a changed expression breaking unless the
queries differ only in formatting, which is judged on the normalized sqlglot trees (identifier case,
whitespace, keyword case and comments do not count).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from fsql.definitions import FeatureView, Project, TrainingSet

Action = Literal["added", "changed", "updated", "removed", "unchanged"]
Kind = Literal["feature_view", "training_set", "source"]


ColumnAction = Literal["added", "removed", "retyped", "expression", "described"]


@dataclass(frozen=True)
class ColumnChange:
    name: str
    action: ColumnAction
    breaking: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "breaking": self.breaking, "detail": self.detail}


@dataclass
class Change:
    kind: Kind
    name: str
    action: Action
    breaking: bool = False
    reasons: list[str] = field(default_factory=list)
    columns: list[ColumnChange] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "breaking": self.breaking,
                "reasons": self.reasons, "columns": [c.to_dict() for c in self.columns]}


def diff_definitions(
    project: Project,
    views: dict[str, FeatureView],
    training_sets: dict[str, TrainingSet],
    *,
    locations: Mapping[str, str | None] | None = None,
    recorded: Mapping[str, str | None] | None = None,
) -> list[Change]:
    """Changes that applying ``project`` makes to a registry holding ``views`` and ``training_sets``;
    ``locations`` (where the file sources resolve now) is compared with ``recorded`` (where they
    resolved at the last build; a source missing from it was never built)."""
    changes: list[Change] = []
    changes += _relocated(locations or {}, recorded or {})
    changes += _diff_kind("feature_view", project.views, views, _view_changes)
    changes += _diff_kind("training_set", project.training_sets, training_sets, _set_changes)
    return changes


def _relocated(locations: Mapping[str, str | None], recorded: Mapping[str, str | None]) -> list[Change]:
    changes = []
    for name, now in locations.items():
        if now is None or name not in recorded or recorded[name] == now:
            continue
        before = recorded[name]
        reason = (f"now read from {now} (was {before})" if before is not None
                  else f"now read from {now} (the last build did not record where)")
        changes.append(Change("source", name, "updated",
                              reasons=[reason, "views reading it are recomputed by the next materialize"]))
    return changes


def diff_pair(old: FeatureView | TrainingSet, new: FeatureView | TrainingSet) -> Change:
    """The change from one definition of an object to another (two registered revisions, or the
    registry's and the files'), with the same verdicts plan and build report."""
    if isinstance(new, FeatureView):
        assert isinstance(old, FeatureView)
        return _pair("feature_view", old, new, _view_changes)
    return _pair("training_set", old, new, _set_changes)


def _pair(kind: Kind, before: Any, definition: Any, compare: Any) -> Change:
    change = Change(kind, definition.name, "changed" if before.fingerprint != definition.fingerprint else "unchanged")
    compare(change, before, definition)
    if change.action == "unchanged" and change.reasons:
        change.action = "updated"
    return change


def _diff_kind(kind: Kind, new: dict[str, Any], old: dict[str, Any], compare: Any) -> list[Change]:
    changes = []
    for name, definition in new.items():
        before = old.get(name)
        if before is None:
            changes.append(Change(kind, name, "added"))
            continue
        changes.append(_pair(kind, before, definition, compare))
    for name in old:
        if name not in new:
            changes.append(Change(kind, name, "removed", breaking=True, reasons=["removed"]))
    return changes


def _metadata(change: Change, old: FeatureView | TrainingSet, new: FeatureView | TrainingSet) -> None:
    for label in ("owner", "tags", "description"):
        if getattr(old, label) != getattr(new, label):
            change.reasons.append(f"{label} changed")
    if old.path != new.path:
        change.reasons.append(f"file moved from {old.path}")


def _view_changes(change: Change, old: FeatureView, new: FeatureView) -> None:
    old_types = {c.name: c.dtype for c in old.columns}
    new_types = {c.name: c.dtype for c in new.columns}
    removed = [c for c in old_types if c not in new_types]
    added = [c for c in new_types if c not in old_types]
    retyped = [c for c in new_types if c in old_types and old_types[c] != new_types[c]]
    if removed:
        change.breaking = True
        change.reasons.append(f"columns removed: {', '.join(removed)}")
    if retyped:
        change.breaking = True
        change.reasons.append("column types changed: " + ", ".join(
            f"{c} {old_types[c]} -> {new_types[c]}" for c in retyped))
    if added:
        change.reasons.append(f"columns added: {', '.join(added)}")
    change.columns += [ColumnChange(c, "removed", True, old_types[c]) for c in removed]
    change.columns += [ColumnChange(c, "retyped", True, f"{old_types[c]} -> {new_types[c]}") for c in retyped]
    change.columns += [ColumnChange(c, "added", False, new_types[c]) for c in added]
    if old.query != new.query or old.dialect != new.dialect:
        _expression_changes(change, old, new, [c for c in new_types if c in old_types and c not in retyped])
    for label in ("entity", "entity_keys", "timestamp", "created"):
        if getattr(old, label) != getattr(new, label):
            change.breaking = True
            change.reasons.append(f"{label.replace('_', ' ')} changed")
    if old.ttl != new.ttl:
        change.reasons.append("ttl changed")
    if old.pit_plan != new.pit_plan:
        change.reasons.append("pit_plan changed")
    _metadata(change, old, new)
    old_docs = {c.name: c.description for c in old.columns}
    described = [c.name for c in new.columns if c.name in old_docs and old_docs[c.name] != c.description]
    if described:
        change.reasons.append(f"column descriptions changed: {', '.join(described)}")
        change.columns += [ColumnChange(c, "described", False) for c in described]
    if change.action == "changed" and old.depends_on == new.depends_on and not change.reasons:
        change.reasons.append("upstream definitions changed")
    if change.action == "changed" and not change.reasons:
        change.reasons.append("query changed")


def _expression_changes(change: Change, old: FeatureView, new: FeatureView, kept: list[str]) -> None:
    """Columns whose computation changed. Anything outside the SELECT list (FROM, WHERE, WINDOW, GROUP
    BY...) can change every column's values, so such a change marks every kept column."""
    before, after = normalized(old.query, old.dialect), normalized(new.query, new.dialect)
    if before is None or after is None:
        changed = kept
    elif before == after:
        if _plain(old.query, old.dialect) != _plain(new.query, new.dialect):
            change.reasons.append("query reformatted (same normalized SQL)")
        return
    else:
        old_cols, old_rest = _split(before)
        new_cols, new_rest = _split(after)
        changed = kept if old_rest != new_rest else [c for c in kept if old_cols.get(c) != new_cols.get(c)]
    if changed:
        change.breaking = True
        change.reasons.append(f"expressions changed: {', '.join(changed)}")
        change.columns += [ColumnChange(c, "expression", True) for c in changed]


def normalized(sql: str, dialect: str) -> exp.Expression | None:
    """The query as a tree compared for meaning: identifiers case-normalized, comments dropped."""
    try:
        tree = normalize_identifiers(sqlglot.parse_one(sql, read=dialect), dialect=dialect)
    except SqlglotError:
        return None
    for node in tree.walk():
        node.comments = None
    return tree


def _split(query: exp.Expression) -> tuple[dict[str, exp.Expression], exp.Expression]:
    """(output column -> its expression, the query without its SELECT list)."""
    if not isinstance(query, exp.Select):
        return {}, query
    columns = {p.alias_or_name: p.unalias() for p in query.selects}
    rest = query.copy()
    rest.set("expressions", [])
    return columns, rest


def _plain(sql: str, dialect: str) -> str:
    """The query without comments (where column descriptions live) in the original spelling."""
    return sqlglot.parse_one(sql, read=dialect).sql(dialect=dialect, comments=False)


def formatting_only(old_sql: str, new_sql: str, dialect: str) -> bool:
    before, after = normalized(old_sql, dialect), normalized(new_sql, dialect)
    return before is not None and before == after


def pretty(sql: str, dialect: str) -> str:
    """The query laid out one clause and column per line (comments kept), so diffs are readable."""
    try:
        return sqlglot.parse_one(sql, read=dialect).sql(dialect=dialect, pretty=True)
    except SqlglotError:
        return sql


def sql_diff(old_sql: str, new_sql: str, old_label: str = "before", new_label: str = "after", *,
             dialect: str | None = None) -> list[str]:
    """A unified diff of two queries, pretty-printed first when ``dialect`` is given."""
    if dialect is not None:
        old_sql, new_sql = pretty(old_sql, dialect), pretty(new_sql, dialect)
    return list(difflib.unified_diff(old_sql.splitlines(), new_sql.splitlines(), old_label, new_label, lineterm=""))


def _set_changes(change: Change, old: TrainingSet, new: TrainingSet) -> None:
    removed = [str(f) for f in old.features if f not in new.features]
    added = [str(f) for f in new.features if f not in old.features]
    if removed:
        change.breaking = True
        change.reasons.append(f"features removed: {', '.join(removed)}")
    if added:
        change.reasons.append(f"features added: {', '.join(added)}")
    if old.timestamp != new.timestamp:
        change.breaking = True
        change.reasons.append("timestamp changed")
    _metadata(change, old, new)
    if old.query != new.query and not formatting_only(old.query, new.query, new.dialect):
        change.reasons.append("spine query changed")
    if change.action == "changed" and not change.reasons:
        change.reasons.append("upstream views changed")
