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
        freshness = store.service.freshness()
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
            freshness = store.service.freshness()
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


@app.command()
@handles_errors
def lineage(
    name: str,
    transitive: Annotated[bool, typer.Option(help="Follow edges all the way to sources and models.")] = False,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Column-level lineage of a view or training set: what it reads and what reads it."""
    with _store(project) as store:
        graph = store.service.registry.lineage(name, transitive=transitive)
        if as_json:
            _json(graph.to_dict())
            return

        def show(edge: Any) -> str:
            down = f"{edge.downstream_name}.{edge.downstream_column}" if edge.downstream_column else edge.downstream_name
            up = f"{edge.upstream_name}.{edge.upstream_column}" if edge.upstream_column else edge.upstream_name
            return f"  {down:<40} <- {edge.upstream_kind} {up}"

        typer.echo(f"{graph.kind} {graph.name} v{graph.version or '-'}")
        if graph.upstream:
            typer.echo("reads:")
            for edge in graph.upstream:
                typer.echo(show(edge))
        if graph.downstream:
            typer.echo("read by:")
            for edge in graph.downstream:
                typer.echo(show(edge))


@app.command()
@handles_errors
def search(text: str, project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Search views, features and training sets by name, description and tags."""
    with _store(project) as store:
        hits = store.service.registry.search(text)
        if as_json:
            _json([h.to_dict() for h in hits])
            return
        if not hits:
            typer.echo(f"nothing matches '{text}'")
        for hit in hits:
            typer.echo(f"{hit.kind:<13} {hit.name:<40} {hit.description or ''}")


def _parse_time(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise FsqlError(f"{what} '{value}' is not an ISO timestamp", hint="e.g. 2026-01-31 or 2026-01-31T12:00:00+00:00") from None


@app.command()
@handles_errors
def materialize(
    views: Annotated[list[str] | None, typer.Argument(help="Views to materialize (default: all).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Recompute from the start instead of the watermark.")] = False,
    start: Annotated[str | None, typer.Option(help="Backfill window start (exclusive), ISO time.")] = None,
    end: Annotated[str | None, typer.Option(help="Window end (inclusive), ISO time; default now.")] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Upsert the latest values per entity into the online store (incremental from the watermark)."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with _store(project) as store:
        interactive = sys.stderr.isatty() and not as_json
        began = time.perf_counter()
        if interactive:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,} rows"),
                          TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), transient=True) as bar:
                tasks: dict[str, Any] = {}

                def report(view: str, rows: int) -> None:
                    if view not in tasks:
                        tasks[view] = bar.add_task(view, total=None, rate="")
                    task = tasks[view]
                    bar.advance(task, rows)
                    done = bar.tasks[task].completed
                    elapsed = max(time.perf_counter() - began, 1e-9)
                    bar.update(task, rate=f"{done / elapsed:,.0f} rows/s")

                results = store.service.materialize(views or None, full=full, start=_parse_time(start, "--start"),
                                                    end=_parse_time(end, "--end"), progress=report)
        else:
            results = store.service.materialize(views or None, full=full, start=_parse_time(start, "--start"),
                                                end=_parse_time(end, "--end"))
        if as_json:
            _json([r.to_dict() for r in results])
            return
        total = sum(r.rows for r in results)
        for r in results:
            rate = f"{r.rows / r.seconds:,.0f} rows/s" if r.seconds > 0 else ""
            window = f"({r.start.isoformat() if r.start else '-inf'}, {r.end.isoformat()}]"
            typer.echo(f"  {r.view:<28} {r.outcome:<8} {r.rows:>9,} rows  {window}  {rate}")
        typer.echo(f"materialized {len(results)} views, {total:,} rows in {time.perf_counter() - began:.2f}s")


@app.command()
@handles_errors
def get(
    name: Annotated[str, typer.Argument(help="A feature view, training set, or view.feature.")],
    entity: Annotated[list[str], typer.Option("--entity", "-e", help="key=value; repeat for composite keys or several entities.")],
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Read online values for one or more entities."""
    columns: dict[str, list[str]] = {}
    for item in entity:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FsqlError(f"invalid --entity '{item}'", hint="write --entity customer_id=42")
        columns.setdefault(key, []).append(value)
    with _store(project) as store:
        rows = store.service.online(name, columns, as_dicts=True)
        if as_json:
            _json(rows)
            return
        for row in rows:
            for key, value in row.items():
                if not key.endswith("__status"):
                    status = row.get(f"{key}__status")
                    typer.echo(f"{key:<32} {value!s:<24} {status or ''}")
            typer.echo("")


@app.command("training-set")
@handles_errors
def training_set(
    name: Annotated[str, typer.Argument(help="A training set defined in features/.")],
    spine: Annotated[str | None, typer.Option(help="A source name, a SQL query, or a .parquet/.csv file; default: the set's own spine.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file (.parquet or .csv).")] = Path("training_set.parquet"),
    pit_mode: Annotated[str, typer.Option(help="known-at (default) or event-time (Feast-compatible).")] = "known-at",
    project: ProjectOpt = Path("."),
) -> None:
    """Compute a point-in-time correct training set and write it to a file."""
    import time

    import polars as pl

    with _store(project) as store:
        spine_data: Any = spine
        if spine and Path(spine).suffix in (".parquet", ".csv") and Path(spine).exists():
            spine_data = pl.read_parquet(spine) if spine.endswith(".parquet") else pl.read_csv(spine, try_parse_dates=True)
        began = time.perf_counter()
        if sys.stderr.isatty():
            from rich.console import Console

            with Console(stderr=True).status(f"computing training set {name}..."):
                frame = store.training_set(name, spine=spine_data, pit_mode=pit_mode)  # type: ignore[arg-type]
        else:
            frame = store.training_set(name, spine=spine_data, pit_mode=pit_mode)  # type: ignore[arg-type]
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix == ".csv":
            frame.write_csv(output)
        else:
            frame.write_parquet(output)
        typer.echo(f"wrote {frame.height:,} rows x {frame.width} columns to {output} in {time.perf_counter() - began:.2f}s")
