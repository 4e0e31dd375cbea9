"""Catalog read models over the registry: definition history, statistics, ranked search, feature lineage.

Functions here take an open connection; ``Registry`` wraps each in a read or write transaction. The
history is written by ``apply`` (one revision per distinct definition of a view or training set) so it
shows metadata-only edits as well as new versions, each with the git commit it was built from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from fsql.definitions import FeatureView, Project, TrainingSet
from fsql.errors import NotFoundError, did_you_mean
from fsql.registry import tables as t
from fsql.registry.diff import diff_pair
from fsql.registry.registry import (
    LineageEdge,
    RunRecord,
    _Lineage,
    _Record,
    _run_record,
    _training_set_records,
    _view_records,
    from_json,
    to_json,
)

StatsScope = Literal["history", "latest"]
RevisionKind = Literal["view", "training_set"]


@dataclass(frozen=True)
class Revision(_Record):
    kind: RevisionKind
    name: str
    revision: int  # 1, 2, ... in build order
    version: str
    fingerprint: str
    created_at: datetime
    git_commit: str | None
    breaking: bool  # compared with the previous revision
    reasons: tuple[str, ...]
    current: bool
    definition: FeatureView | TrainingSet
    runs: tuple[RunRecord, ...]  # materialization runs of this version, newest first (views only)


@dataclass(frozen=True)
class StatsRecord(_Record):
    view: str
    version: str
    scope: StatsScope
    feature: str
    as_of: datetime  # the time the numbers describe
    computed_at: datetime
    stats: dict[str, Any]


@dataclass(frozen=True)
class RankedHit(_Record):
    kind: Literal["view", "feature", "training_set"]
    name: str  # "view.feature" for features
    description: str | None
    matched: tuple[str, ...]  # fields that matched: name, description, tags, features, owner
    score: int  # lower ranks higher
    owner: str | None
    tags: tuple[str, ...]
    entity: str | None


@dataclass(frozen=True)
class FeatureLineage(_Record):
    view: str
    feature: str
    version: str
    upstream: tuple[LineageEdge, ...]  # down to source columns, through views built on views
    downstream: tuple[LineageEdge, ...]  # views, training sets and models that read the feature


# -- history ---------------------------------------------------------------------------------------


def _comparable(definition: Mapping[str, Any]) -> dict[str, Any]:
    # The annotation's line moves whenever lines are added above it; that alone is not an edit.
    return {k: v for k, v in definition.items() if k != "line"}


def record_revisions(conn: Connection, project: Project, git_commit: str | None, now: datetime) -> None:
    """Append a revision for every view and training set whose definition differs from its last one."""
    dr = t.definition_revisions
    objects: list[tuple[RevisionKind, FeatureView | TrainingSet]] = [
        *(("view", v) for v in project.views.values()),
        *(("training_set", s) for s in project.training_sets.values()),
    ]
    last: dict[tuple[str, str], Any] = {}
    latest = (
        sa.select(dr.c.kind, dr.c.name, sa.func.max(dr.c.revision).label("revision"))
        .group_by(dr.c.kind, dr.c.name)
        .subquery()
    )
    query = sa.select(dr).join(
        latest,
        sa.and_(dr.c.kind == latest.c.kind, dr.c.name == latest.c.name, dr.c.revision == latest.c.revision),
    )
    for row in conn.execute(query).mappings():
        last[(row["kind"], row["name"])] = row
    rows = []
    for kind, obj in objects:
        definition = to_json(obj)
        previous = last.get((kind, obj.name))
        if previous is not None and _comparable(previous["definition"]) == _comparable(definition):
            continue
        if previous is None:
            breaking, reasons = False, ["first registered"]
        else:
            cls = FeatureView if kind == "view" else TrainingSet
            change = diff_pair(from_json(cls, previous["definition"]), obj)
            breaking, reasons = change.breaking, change.reasons or ["definition changed"]
        rows.append({
            "kind": kind, "name": obj.name, "revision": (previous["revision"] if previous else 0) + 1,
            "version": obj.version, "fingerprint": obj.fingerprint, "definition": definition,
            "git_commit": git_commit, "breaking": breaking, "reasons": reasons, "created_at": now,
        })
    if rows:
        conn.execute(dr.insert(), rows)


def _current_versions(conn: Connection, name: str) -> tuple[RevisionKind, str | None]:
    for kind, table in (("view", t.feature_views), ("training_set", t.training_sets)):
        row = conn.execute(sa.select(table.c.version, table.c.removed_at).where(table.c.name == name)).first()
        if row is not None:
            return kind, (row.version if row.removed_at is None else None)  # type: ignore[return-value]
    names = [r[0] for r in conn.execute(sa.select(t.feature_views.c.name))]
    names += [r[0] for r in conn.execute(sa.select(t.training_sets.c.name))]
    raise NotFoundError(f"no feature view or training set named '{name}' in the registry",
                        hint=did_you_mean(name, names) or "run `fsql ls`")


def history(conn: Connection, name: str, *, runs_per_version: int = 20) -> list[Revision]:
    """Every revision of a view or training set, oldest first."""
    kind, current = _current_versions(conn, name)
    dr, mr = t.definition_revisions, t.materialization_runs
    rows = list(conn.execute(
        sa.select(dr).where(dr.c.kind == kind, dr.c.name == name).order_by(dr.c.revision)).mappings())
    if not rows:
        return _history_before_revisions(conn, kind, name, current)
    runs: dict[str, list[RunRecord]] = {}
    if kind == "view":
        for r in conn.execute(sa.select(mr).where(mr.c.view == name).order_by(mr.c.id.desc())).mappings():
            bucket = runs.setdefault(r["version"], [])
            if len(bucket) < runs_per_version:
                bucket.append(_run_record(r))
    cls = FeatureView if kind == "view" else TrainingSet
    last = rows[-1]["revision"]
    return [
        Revision(kind=kind, name=name, revision=r["revision"], version=r["version"], fingerprint=r["fingerprint"],
                 created_at=r["created_at"], git_commit=r["git_commit"], breaking=bool(r["breaking"]),
                 reasons=tuple(r["reasons"]), current=r["revision"] == last and r["version"] == current,
                 definition=from_json(cls, r["definition"]), runs=tuple(runs.get(r["version"], ())))
        for r in rows
    ]


def _history_before_revisions(conn: Connection, kind: RevisionKind, name: str, current: str | None) -> list[Revision]:
    """A registry built before revisions were recorded still has its versions: list those."""
    table, key = ((t.view_versions, "view") if kind == "view" else (t.training_set_versions, "training_set"))
    cls = FeatureView if kind == "view" else TrainingSet
    rows = conn.execute(sa.select(table).where(table.c[key] == name).order_by(table.c.created_at)).mappings()
    return [
        Revision(kind=kind, name=name, revision=i, version=r["version"], fingerprint=r["fingerprint"],
                 created_at=r["created_at"], git_commit=None, breaking=False, reasons=(), current=r["version"] == current,
                 definition=from_json(cls, r["definition"]), runs=())
        for i, r in enumerate(rows, 1)
    ]


# -- statistics ------------------------------------------------------------------------------------


def save_stats(conn: Connection, view: str, version: str, scope: StatsScope, as_of: datetime, computed_at: datetime,
               stats: Mapping[str, Mapping[str, Any]]) -> None:
    fs = t.feature_stats
    conn.execute(fs.delete().where(fs.c.view == view, fs.c.version == version, fs.c.scope == scope))
    if stats:
        conn.execute(fs.insert(), [
            {"view": view, "version": version, "scope": scope, "feature": feature, "as_of": as_of,
             "computed_at": computed_at, "stats": dict(values)}
            for feature, values in stats.items()
        ])


def load_stats(conn: Connection, view: str, version: str | None = None, scope: StatsScope | None = None
               ) -> list[StatsRecord]:
    """Stored statistics of a view (its current version unless ``version``), in feature order."""
    fs, fv = t.feature_stats, t.feature_views
    if version is None:
        version = conn.execute(sa.select(fv.c.version).where(fv.c.name == view)).scalar()
        if version is None:
            return []
    query = sa.select(fs).where(fs.c.view == view, fs.c.version == version)
    if scope is not None:
        query = query.where(fs.c.scope == scope)
    found = _view_records(conn, name=view, include_removed=True)
    order = {f.name: i for i, f in enumerate(found[0].features)} if found else {}
    records = [StatsRecord(view=r["view"], version=r["version"], scope=r["scope"], feature=r["feature"],
                           as_of=r["as_of"], computed_at=r["computed_at"], stats=dict(r["stats"]))
               for r in conn.execute(query).mappings()]
    return sorted(records, key=lambda s: (s.scope, order.get(s.feature, len(order)), s.feature))


# -- search ----------------------------------------------------------------------------------------

# Rank of the field a word matched, best first: the object's name, a feature's name, a tag, the owner,
# the description.
FIELD_RANK = {"name": 0, "features": 1, "tags": 2, "owner": 3, "description": 4}
_KIND_ORDER = {"view": 0, "feature": 1, "training_set": 2}
_WORD = re.compile(r"\S+")


def _score(words: Sequence[str], fields: Mapping[str, Iterable[str | None]]) -> tuple[int, tuple[str, ...]] | None:
    """(score, matched fields) when every word matches some field; None otherwise."""
    folded = {label: [v.casefold() for v in values if v] for label, values in fields.items()}
    total, matched = 0, set()
    for word in words:
        hits = [label for label, values in folded.items() if any(word in v for v in values)]
        if not hits:
            return None
        matched.update(hits)
        total += min(FIELD_RANK[h] for h in hits)
    return total, tuple(label for label in ("name", "description", "tags", "features", "owner") if label in matched)


def search(conn: Connection, text: str, *, owner: str | None = None, tag: str | None = None,
           entity: str | None = None) -> list[RankedHit]:
    """Views, features and training sets matching every word of ``text`` (case-insensitive), ranked by
    where the words matched; each object at most once. Filters match exactly (case-insensitive)."""
    # Matched in Python rather than with SQL LIKE: SQLite's lower() only folds ASCII, and the catalog is
    # small enough to scan.
    words = [w.casefold() for w in _WORD.findall(text)]

    def keep(hit_owner: str | None, hit_tags: Iterable[str], hit_entity: str | None) -> bool:
        if owner is not None and (hit_owner or "").casefold() != owner.casefold():
            return False
        if tag is not None and tag.casefold() not in {x.casefold() for x in hit_tags}:
            return False
        return entity is None or (hit_entity or "").casefold() == entity.casefold()

    hits: list[RankedHit] = []

    def add(kind: Any, name: str, description: str | None, fields: Mapping[str, Iterable[str | None]],
            hit_owner: str | None, tags: tuple[str, ...], hit_entity: str | None) -> None:
        if not keep(hit_owner, tags, hit_entity):
            return
        scored = _score(words, fields)
        if scored is not None:
            hits.append(RankedHit(kind, name, description, scored[1], scored[0], hit_owner, tags, hit_entity))

    for view in _view_records(conn):
        add("view", view.name, view.description,
            {"name": [view.name], "description": [view.description], "tags": view.tags,
             "features": view.feature_names, "owner": [view.owner]},
            view.owner, view.tags, view.entity)
        for feature in view.features:
            add("feature", f"{view.name}.{feature.name}", feature.description,
                {"name": [feature.name], "description": [feature.description]},
                view.owner, view.tags, view.entity)
    if entity is None:
        for ts in _training_set_records(conn):
            add("training_set", ts.name, ts.description,
                {"name": [ts.name], "description": [ts.description], "tags": ts.tags,
                 "features": [ref.feature for ref in ts.features], "owner": [ts.owner]},
                ts.owner, ts.tags, None)
    return sorted(hits, key=lambda h: (h.score, _KIND_ORDER[h.kind], h.name))


# -- feature lineage -------------------------------------------------------------------------------


def feature_lineage(conn: Connection, view: str, feature: str) -> FeatureLineage:
    """One feature's lineage: upstream through views on views down to source columns; downstream to the
    views, training sets and models that read it. Current versions only."""
    graph = _Lineage(conn)
    _, version = graph.resolve(view, "view")
    columns = [f.name for record in _view_records(conn, name=view) for f in record.features]
    if feature not in columns:
        raise NotFoundError(f"feature view '{view}' has no column '{feature}'",
                            hint=did_you_mean(feature, columns) or "run `fsql describe " + view + "`")
    up: dict[LineageEdge, None] = {}
    queue, seen = [(view, feature)], {(view, feature)}
    while queue:
        name, column = queue.pop(0)
        for edge in graph.direct("view", name, up=True):
            if edge.downstream_column != column:
                continue
            up.setdefault(edge, None)
            node = (edge.upstream_name, edge.upstream_column)
            if edge.upstream_kind == "view" and edge.upstream_column and node not in seen:
                seen.add(node)
                queue.append(node)  # type: ignore[arg-type]
    down: dict[LineageEdge, None] = {}
    queue, seen = [(view, feature)], {(view, feature)}
    sets: set[str] = set()
    while queue:
        name, column = queue.pop(0)
        for edge in graph.direct("view", name, up=False):
            if edge.upstream_column != column:
                continue
            down.setdefault(edge, None)
            node = (edge.downstream_name, edge.downstream_column)
            if edge.downstream_kind == "view" and edge.downstream_column and node not in seen:
                seen.add(node)
                queue.append(node)  # type: ignore[arg-type]
            elif edge.downstream_kind == "training_set":
                sets.add(edge.downstream_name)
    for name in sorted(sets):
        for edge in graph.direct("training_set", name, up=False):
            if edge.downstream_kind == "model":
                down.setdefault(edge, None)
    return FeatureLineage(view, feature, version or "", tuple(up), tuple(down))


# -- diffs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionDiff(_Record):
    name: str
    kind: RevisionKind
    old: Revision
    new: Revision
    action: str  # changed (new version), updated (metadata only), unchanged
    breaking: bool
    reasons: tuple[str, ...]
    columns: tuple[dict[str, Any], ...]  # {name, action, breaking, detail}
    sql_diff: tuple[str, ...]  # unified diff lines of the queries

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for side in ("old", "new"):
            data[side] = {k: v for k, v in data[side].items() if k not in ("definition", "runs")}
        return data


def pick_revision(revisions: Sequence[Revision], selector: str) -> Revision:
    """A revision by number (``3``), version hash prefix (``a1b2c3``; its latest revision) or ``current``."""
    text = selector.strip()
    if text in ("current", "latest", "head"):
        return revisions[-1]
    if text.isdigit() and len(text) < 6:
        found = [r for r in revisions if r.revision == int(text)]
    else:
        found = [r for r in revisions if r.version.startswith(text) or r.fingerprint.startswith(text)]
    if not found:
        known = ", ".join(f"{r.revision} ({r.version})" for r in revisions)
        raise NotFoundError(f"'{revisions[-1].name}' has no revision or version '{selector}'",
                            hint=f"its revisions are {known}")
    return found[-1]


def version_diff(revisions: Sequence[Revision], old: str | None = None, new: str | None = None) -> VersionDiff:
    """The difference between two revisions; by default the last two."""
    from fsql.errors import RequestError
    from fsql.registry.diff import sql_diff

    if not revisions:
        raise NotFoundError("no revisions recorded", hint="run `fsql build`")
    if old is None and new is None:
        if len(revisions) < 2:
            raise RequestError(f"'{revisions[-1].name}' has a single revision; there is nothing to compare",
                               hint="edit its feature file and run `fsql build`, then diff again")
        before, after = revisions[-2], revisions[-1]
    else:
        before = pick_revision(revisions, old) if old is not None else revisions[-2 if len(revisions) > 1 else -1]
        after = pick_revision(revisions, new) if new is not None else revisions[-1]
    change = diff_pair(before.definition, after.definition)
    return VersionDiff(
        name=after.name, kind=after.kind, old=before, new=after, action=change.action, breaking=change.breaking,
        reasons=tuple(change.reasons), columns=tuple(c.to_dict() for c in change.columns),
        sql_diff=tuple(sql_diff(before.definition.query, after.definition.query,
                                f"{after.name} r{before.revision} ({before.version})",
                                f"{after.name} r{after.revision} ({after.version})",
                                dialect=after.definition.dialect)),
    )
