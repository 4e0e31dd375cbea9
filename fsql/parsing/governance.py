"""The project's [governance] rules, checked on parsed feature files before anything is built.

Every broken rule is collected (not just the first), each located at the annotation or column it is
about, so one `fsql check` or `fsql build` shows the whole list.
"""

from __future__ import annotations

import re

from fsql.config import Config, Governance
from fsql.errors import FeatureFileError, RuleViolations
from fsql.parsing.project import ParsedFile, ParsedProject


def _duration(value: object) -> str:
    seconds = int(value.total_seconds())  # type: ignore[attr-defined]
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _column_lines(parsed: ParsedFile) -> dict[str, int]:
    lines: dict[str, int] = {}
    for projection in parsed.query.selects:
        for node in projection.walk():
            line = (getattr(node, "_meta", None) or {}).get("line")
            if line is not None:
                lines[projection.alias_or_name] = parsed.file_line(int(line)) or parsed.line
                break
    return lines


def violations(parsed: ParsedProject, rules: Governance) -> list[FeatureFileError]:
    """Every broken rule, in file order."""
    found: list[FeatureFileError] = []
    if not rules.enabled:
        return found
    config: Config = parsed.config
    files = sorted([*parsed.views.values(), *parsed.training_sets.values()], key=lambda p: (p.path, p.line))
    for file in files:
        found += _file_violations(file, rules, config)
    return found


def _file_violations(file: ParsedFile, rules: Governance, config: Config) -> list[FeatureFileError]:
    found: list[FeatureFileError] = []
    label = "feature view" if file.kind == "feature_view" else "training set"
    if rules.require_owner and not file.owner:
        found.append(file.error(f"{label} '{file.name}' has no owner",
                                hint="[governance] require_owner: add -- @owner team-name to the header"))
    if rules.require_description and not file.header.description:
        found.append(file.error(f"{label} '{file.name}' has no description",
                                hint="[governance] require_description: add a -- comment line to the header"))
    if rules.allowed_tags is not None:
        allowed = set(rules.allowed_tags)
        for tag in file.tags:
            if tag not in allowed:
                found.append(file.error(f"tag '{tag}' is not allowed", key="tags",
                                        hint=f"[governance] allowed_tags: use {', '.join(rules.allowed_tags)}"))
    if file.kind != "feature_view":
        return found
    if rules.view_name_pattern and not re.fullmatch(rules.view_name_pattern, file.name):
        found.append(file.error(f"feature view name '{file.name}' does not match the naming pattern",
                                hint=f"[governance] view_name_pattern = '{rules.view_name_pattern}'"))
    if rules.require_ttl and file.ttl is None:
        found.append(file.error(f"feature view '{file.name}' has no @ttl",
                                hint="[governance] require_ttl: add -- @ttl 30d to the header"))
    if rules.max_ttl is not None and file.ttl is not None and file.ttl > rules.max_ttl:
        found.append(file.error(f"@ttl {_duration(file.ttl)} is longer than the maximum {_duration(rules.max_ttl)}",
                                key="ttl", hint=f"[governance] max_ttl = \"{_duration(rules.max_ttl)}\""))
    entity = config.entities.get(file.entity)
    reserved = {*(entity.keys if entity else ()), file.timestamp, file.created}
    lines = _column_lines(file)
    for name, description in file.projections:
        if name in reserved:
            continue
        line = lines.get(name, file.line)
        if rules.feature_name_pattern and not re.fullmatch(rules.feature_name_pattern, name):
            found.append(file.error(f"feature name '{name}' does not match the naming pattern", line=line,
                                    hint=f"[governance] feature_name_pattern = '{rules.feature_name_pattern}'"))
        if rules.require_description and not description:
            found.append(file.error(f"feature '{name}' has no description", line=line,
                                    hint="[governance] require_description: add a -- comment after the column"))
    return found


def enforce(parsed: ParsedProject, rules: Governance) -> None:
    """Raise one RuleViolations listing every broken rule, if any."""
    found = violations(parsed, rules)
    if found:
        raise RuleViolations(found)


__all__ = ["enforce", "violations"]
