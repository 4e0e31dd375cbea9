"""The one diff between a project's definitions and what the registry holds.

`fsql plan` and `fsql build` both report this list, computed from fully resolved definitions (column
types included), so what plan announces is what build does. A change is one of:

- ``added`` / ``removed``: the object appears or disappears (a removal is breaking);
- ``changed``: a new version (the content fingerprint moved), breaking when something a consumer
  relies on disappeared or changed meaning (a column removed or retyped, keys or timing changed);
- ``updated``: the same version with new metadata (owner, tags, descriptions): always compatible;
- ``unchanged``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fsql.definitions import FeatureView, Project, TrainingSet

Action = Literal["added", "changed", "updated", "removed", "unchanged"]
Kind = Literal["feature_view", "training_set"]


@dataclass
class Change:
    kind: Kind
    name: str
    action: Action
    breaking: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "breaking": self.breaking,
                "reasons": self.reasons}


def diff_definitions(
    project: Project,
    views: dict[str, FeatureView],
    training_sets: dict[str, TrainingSet],
) -> list[Change]:
    """Changes that applying ``project`` makes to a registry holding ``views`` and ``training_sets``."""
    changes: list[Change] = []
    changes += _diff_kind("feature_view", project.views, views, _view_changes)
    changes += _diff_kind("training_set", project.training_sets, training_sets, _set_changes)
    return changes


def _diff_kind(kind: Kind, new: dict[str, Any], old: dict[str, Any], compare: Any) -> list[Change]:
    changes = []
    for name, definition in new.items():
        before = old.get(name)
        if before is None:
            changes.append(Change(kind, name, "added"))
            continue
        change = Change(kind, name, "changed" if before.fingerprint != definition.fingerprint else "unchanged")
        compare(change, before, definition)
        if change.action == "unchanged" and change.reasons:
            change.action = "updated"
        changes.append(change)
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
    for label in ("entity", "entity_keys", "timestamp", "created"):
        if getattr(old, label) != getattr(new, label):
            change.breaking = True
            change.reasons.append(f"{label.replace('_', ' ')} changed")
    if old.ttl != new.ttl:
        change.reasons.append("ttl changed")
    _metadata(change, old, new)
    old_docs = {c.name: c.description for c in old.columns}
    described = [c.name for c in new.columns if c.name in old_docs and old_docs[c.name] != c.description]
    if described:
        change.reasons.append(f"column descriptions changed: {', '.join(described)}")
    if change.action == "changed" and not change.reasons:
        change.reasons.append("query changed")


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
    if change.action == "changed" and not change.reasons:
        change.reasons.append("spine query or upstream views changed")
