"""The `fsql` command line: Typer commands, thin over the SDK.

Every command exits non-zero with one line `path:line: message; hint` on a user error, and most take
`--json` for scripts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fsql.errors import FsqlError

app = typer.Typer(
    help="fsql: a SQL-first feature store. Feature files are annotated .sql files under features/.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder (holds fsql.toml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}" if ":" not in message.split(" ")[0] else message, err=True)
    raise typer.Exit(code)


def handles_errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FsqlError as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; nothing was committed", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _store(project: Path):  # noqa: ANN202
    from fsql.store import Store

    return Store(project)


def _json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def _progress(enabled: bool) -> Callable[[str], None] | None:
    if not enabled or not sys.stderr.isatty():
        return None
    return lambda message: typer.echo(f"  {message}", err=True)


@app.command()
@handles_errors
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    sample: Annotated[bool, typer.Option("--sample/--no-sample", help="Also write the sample dataset under data/.")] = True,
) -> None:
    """Create a new project with example feature files (and the sample dataset)."""
    from fsql.sample import scaffold

    if (directory / "fsql.toml").exists():
        raise FsqlError(f"{directory}/fsql.toml already exists", hint="choose an empty folder")
    created = scaffold(directory, with_data=sample)
    typer.echo(f"created {len(created)} files in {directory}; next: cd {directory} && fsql build")


@app.command()
@handles_errors
def build(
    project: ProjectOpt = Path("."),
    allow_breaking: Annotated[bool, typer.Option(help="Accept changed column types.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Validate every feature file, register it, and create the generated views."""
    with _store(project) as store:
        result = store.service.build(allow_breaking=allow_breaking, progress=_progress(not as_json))
        if as_json:
            _json(result.to_dict())
            return
        for change in result.changes:
            if change.action != "unchanged":
                flag = " (breaking)" if change.breaking else ""
                typer.echo(f"  {change.action:<9} {change.kind.replace('_', ' ')} {change.name}{flag}")
        typer.echo(result.summary)


@app.command()
@handles_errors
def plan(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Show what `fsql build` would change: added, changed, removed; breaking or compatible."""
    with _store(project) as store:
        changes = store.plan()
        if as_json:
            _json([c.to_dict() for c in changes])
            return
        pending = [c for c in changes if c.action != "unchanged"]
        if not pending:
            typer.echo("no changes: the registry matches the feature files")
            return
        for change in pending:
            kind = "breaking" if change.breaking else "compatible"
            reasons = f": {'; '.join(change.reasons)}" if change.reasons else ""
            typer.echo(f"  {change.action:<8} {change.kind.replace('_', ' ')} {change.name} [{kind}]{reasons}")


@app.command("compile")
@handles_errors
def compile_(
    name: Annotated[str, typer.Argument(help="A feature view or training set.")],
    dialect: Annotated[str, typer.Option("--dialect", "-d", help="Target SQL dialect.")] = "duckdb",
    pit_mode: Annotated[str, typer.Option(help="known-at or event-time.")] = "known-at",
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Print the exact SQL fsql would run for a view or training set, in any supported dialect."""
    with _store(project) as store:
        sql = store.compile(name, dialect, mode=pit_mode)  # type: ignore[arg-type]
        if as_json:
            _json({"name": name, "dialect": dialect, "sql": sql})
        else:
            typer.echo(sql)


def _view_summary(view: Any, freshness: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": view.name,
        "kind": "feature_view",
        "version": view.version,
        "entity": view.entity,
        "entity_keys": list(view.entity_keys),
        "timestamp": view.timestamp,
        "created": view.created,
        "ttl": view.ttl.total_seconds() if view.ttl else None,
        "owner": view.owner,
        "tags": list(view.tags),
        "description": view.description,
        "path": view.path,
        "features": [{"name": c.name, "type": c.dtype, "description": c.description} for c in view.features],
        **(freshness or {}),
    }


def _set_summary(training_set: Any) -> dict[str, Any]:
    return {
        "name": training_set.name,
        "kind": "training_set",
        "version": training_set.version,
        "timestamp": training_set.timestamp,
        "owner": training_set.owner,
        "description": training_set.description,
        "path": training_set.path,
        "features": [str(f) for f in training_set.features],
        "spine_columns": [{"name": c.name, "type": c.dtype} for c in training_set.spine_columns],
    }


@app.command("ls")
@handles_errors
def ls(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List the registered feature views and training sets."""
    with _store(project) as store:
        views, sets = store.service.definitions()
        freshness = store.service.freshness() if hasattr(store.service, "freshness") else {}
        items = [_view_summary(v, freshness.get(v.name)) for v in views.values()] + [_set_summary(s) for s in sets.values()]
        if as_json:
            _json(items)
            return
        if not items:
            typer.echo("nothing registered yet; run `fsql build`")
            return
        for item in items:
            if item["kind"] == "feature_view":
                fresh = item.get("last_materialized_at")
                note = f"  materialized {fresh}" if fresh else ""
                typer.echo(
                    f"{item['name']:<28} view  {item['entity']:<18} {len(item['features'])} features"
                    f"  v{item['version']}{note}"
                )
            else:
                typer.echo(f"{item['name']:<28} set   {len(item['features'])} features  v{item['version']}")


@app.command()
@handles_errors
def describe(name: str, project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Show one feature view or training set: keys, timing, features with types and descriptions."""
    from fsql.errors import NotFoundError, did_you_mean

    with _store(project) as store:
        views, sets = store.service.definitions()
        if name in views:
            freshness = store.service.freshness() if hasattr(store.service, "freshness") else {}
            item = _view_summary(views[name], freshness.get(name))
        elif name in sets:
            item = _set_summary(sets[name])
        else:
            raise NotFoundError(f"no feature view or training set named '{name}'",
                                hint=did_you_mean(name, [*views, *sets]) or "run `fsql ls`")
        if as_json:
            _json(item)
            return
        for key, value in item.items():
            if key == "features":
                typer.echo("features:")
                for feature in value:
                    if isinstance(feature, dict):
                        desc = f"  -- {feature['description']}" if feature.get("description") else ""
                        typer.echo(f"  {feature['name']:<28} {feature['type']:<12}{desc}")
                    else:
                        typer.echo(f"  {feature}")
            elif value not in (None, [], ""):
                typer.echo(f"{key}: {value}")


def main() -> None:  # pragma: no cover
    app()
