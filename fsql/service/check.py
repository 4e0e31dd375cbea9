"""`fsql check`: every feature file parsed and validated, and the [governance] rules, without opening
the warehouse or the registry (so it runs anywhere, e.g. in a pre-commit hook)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fsql.errors import FeatureFileError
from fsql.parsing import governance
from fsql.parsing.project import parse_project
from fsql.service.context import Context


@dataclass
class CheckResult:
    views: list[str]
    training_sets: list[str]
    violations: list[FeatureFileError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "views": self.views, "training_sets": self.training_sets,
                "violations": [{**v.to_dict(), "text": str(v)} for v in self.violations]}


def check(ctx: Context) -> CheckResult:
    """Parse and validate the project and collect every governance violation. A file that does not
    parse raises its FeatureFileError, as build would."""
    parsed = parse_project(ctx.config)
    return CheckResult(list(parsed.views), list(parsed.training_sets),
                       governance.violations(parsed, ctx.config.governance))
