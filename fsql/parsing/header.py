"""The `-- @key value` header of a feature file.

fsql reads the header itself, line by line, so the file stays plain SQL for any console and sqlglot's
grammar is never extended. The key set is closed: a typo is an error with a "did you mean" hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

from fsql.definitions import PIT_PLAN_CHOICES
from fsql.errors import FeatureFileError, did_you_mean

KIND_KEYS = ("feature_view", "training_set")
KEYS = {
    "feature_view": "name",
    "training_set": "name",
    "entity": "name",
    "timestamp": "name",
    "created": "name",
    "ttl": "duration",
    "pit_plan": "plan",
    "owner": "text",
    "tags": "list",
    "description": "text",
    "dialect": "name",
    "features": "refs",
}
_ANNOTATION = re.compile(r"^\s*--\s*@(\S*)\s*(.*?)\s*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^(\d+)\s*(w|d|h|m|s)$")
_DURATION_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.(\*|[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass
class Header:
    values: dict[str, object] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # key -> 1-based line
    description: str | None = None
    body_start: int = 1  # 1-based line where the SQL body starts

    @property
    def kind(self) -> str | None:
        return next((k for k in KIND_KEYS if k in self.values), None)


def parse_duration(text: str) -> timedelta | None:
    """`30d`, `12h`, `15m`, `45s`, `2w` → timedelta; None when the text is not a duration."""
    m = _DURATION.match(text.strip())
    if not m:
        return None
    return timedelta(**{_DURATION_UNITS[m.group(2)]: int(m.group(1))})


def parse_header(text: str, path: str) -> Header:
    header = Header()
    description: list[str] = []
    lines = text.splitlines()
    body_start = len(lines) + 1
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            body_start = number
            break
        m = _ANNOTATION.match(raw)
        if not m:
            comment = stripped[2:].strip()
            if comment:
                description.append(comment)
            continue
        key, value = m.group(1), m.group(2)
        if key not in KEYS:
            hint = did_you_mean(key, KEYS)
            raise FeatureFileError(
                f"unknown annotation '@{key}'",
                path=path,
                line=number,
                hint=hint or f"known annotations: {', '.join('@' + k for k in KEYS)}",
            )
        if key in header.values:
            raise FeatureFileError(
                f"annotation '@{key}' given twice (first on line {header.lines[key]})", path=path, line=number
            )
        header.values[key] = _parse_value(key, value, path, number)
        header.lines[key] = number
    header.body_start = body_start
    header.description = " ".join(description) or None
    if "description" in header.values:
        header.description = str(header.values["description"])
    return header


def _parse_value(key: str, value: str, path: str, line: int) -> object:
    grammar = KEYS[key]
    if not value:
        raise FeatureFileError(f"annotation '@{key}' needs a value", path=path, line=line, hint=_example(key))
    if grammar == "name":
        if not _IDENT.match(value):
            raise FeatureFileError(
                f"'@{key}' must be a plain identifier, got '{value}'", path=path, line=line, hint=_example(key)
            )
        return value
    if grammar == "plan":
        if value not in PIT_PLAN_CHOICES:
            raise FeatureFileError(f"unknown PIT plan '{value}' for '@{key}'", path=path, line=line,
                                   hint=did_you_mean(value, PIT_PLAN_CHOICES) or _example(key))
        return value
    if grammar == "duration":
        duration = parse_duration(value)
        if duration is None or duration <= timedelta(0):
            raise FeatureFileError(
                f"invalid duration '{value}' for '@{key}'",
                path=path,
                line=line,
                hint="write a positive whole number with a unit w, d, h, m or s, e.g. 30d or 12h",
            )
        return duration
    if grammar == "list":
        items = [v.strip() for v in value.split(",")]
        if any(not v for v in items):
            raise FeatureFileError(f"empty item in '@{key}' list", path=path, line=line, hint=_example(key))
        return tuple(items)
    if grammar == "refs":
        refs = []
        for item in (v.strip() for v in value.split(",")):
            m = _REF.match(item)
            if not m:
                raise FeatureFileError(
                    f"invalid feature reference '{item}'",
                    path=path,
                    line=line,
                    hint="write view.feature or view.*, separated by commas",
                )
            refs.append((m.group(1), m.group(2)))
        return tuple(refs)
    return value


def _example(key: str) -> str:
    return {
        "feature_view": "e.g. -- @feature_view customer_spend",
        "training_set": "e.g. -- @training_set churn",
        "entity": "e.g. -- @entity customer",
        "timestamp": "e.g. -- @timestamp event_ts",
        "created": "e.g. -- @created loaded_at",
        "ttl": "e.g. -- @ttl 30d",
        "pit_plan": f"one of {', '.join(PIT_PLAN_CHOICES)}, e.g. -- @pit_plan range",
        "tags": "e.g. -- @tags orders, finance",
        "features": "e.g. -- @features customer_spend.spend_30d, customer_profile.*",
        "dialect": "e.g. -- @dialect postgres",
    }.get(key, f"e.g. -- @{key} value")
