"""The `fsql` command line: Typer commands over the SDK (`fsql.Store`). Commands parse arguments and
format output; everything else happens in the SDK.

Every command exits non-zero with one line `path:line: message; hint` on a user error, and most take
`--json` for scripts.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fsql.config import SUPPORTED_DIALECTS
from fsql.definitions import PIT_PLAN_CHOICES, check_pit_mode, check_plan
from fsql.errors import FsqlError, NotFoundError, RequestError

app = typer.Typer(
    help="fsql: a SQL-first feature store. Feature files are annotated .sql files under features/.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder (holds fsql.toml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
VarOpt = Annotated[list[str] | None, typer.Option("--var", metavar="NAME=VALUE", help="Set a Jinja variable: --var name=value (repeatable).")]
# Choices are plain strings checked by the SDK, so a wrong one is the usual one-line error with a hint.
KindOpt = Annotated[str | None, typer.Option("--kind", metavar="view|training_set|model",
                                             help="Which object when a view, set or model share a name.")]
PitModeOpt = Annotated[str, typer.Option("--pit-mode", metavar="known-at|event-time",
                                         help="known-at (default) or event-time (Feast-compatible).")]
PlanOpt = Annotated[str, typer.Option("--plan", metavar="|".join(PIT_PLAN_CHOICES),
                                      help="PIT join plan for every view; auto (default) chooses per view.")]
F = TypeVar("F", bound=Callable[..., Any])
OUTPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}


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


@contextmanager
def _store(project: Path, variables: list[str] | None = None) -> Iterator[Any]:
    from fsql.store import Store

    sections: dict[str, dict[str, Any]] = {}
    if variables:
        sections["vars"] = dict(_pair(item, "--var", "name=value") for item in variables)
    store = Store(project, **sections)
    try:
        yield store
    finally:
        store.close()


def _pair(item: str, option: str, example: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise RequestError(f"invalid {option} '{item}'", hint=f"write {option} {example}")
    return key.strip(), value


def _json_value(value: Any) -> Any:
    """JSON has no NaN or infinities: they are written as the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if hasattr(value, "to_dict"):
        return _json_value(value.to_dict())
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _json(data: Any) -> None:
    typer.echo(json.dumps(_json_value(data), indent=2, allow_nan=False))


def _duration(value: timedelta | None) -> str | None:
    """A TTL as written in feature files: 30d, 12h, 15m, 45s."""
    if value is None:
        return None
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _progress(enabled: bool) -> Callable[[str], None] | None:
    if not enabled or not sys.stderr.isatty():
        return None
    return lambda message: typer.echo(f"  {message}", err=True)


def _spine_arg(spine: str | None) -> Any:
    """--spine as the SDK takes it: a .parquet/.csv file is read into a DataFrame; a source or view
    name, or a SELECT, is passed as text."""
    if spine and Path(spine).suffix in (".parquet", ".csv") and Path(spine).exists():
        import polars as pl

        return pl.read_parquet(spine) if spine.endswith(".parquet") else pl.read_csv(spine, try_parse_dates=True)
    return spine


def _cell(value: Any) -> str:
    return "null" if value is None else str(value)


@app.command()
@handles_errors
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    sample: Annotated[bool, typer.Option("--sample/--no-sample", help="Also write the sample dataset under data/.")] = True,
) -> None:
    """Create a new project with example feature files (and the sample dataset)."""
    from fsql.errors import ConflictError
    from fsql.sample import scaffold

    if (directory / "fsql.toml").exists():
        raise ConflictError(f"{directory}/fsql.toml already exists", hint="choose an empty folder")
    created = scaffold(directory, with_data=sample)
    typer.echo(f"created {len(created)} files in {directory}; next: cd {directory} && fsql build")


@app.command()
@handles_errors
def build(
    project: ProjectOpt = Path("."),
    allow_breaking: Annotated[bool, typer.Option("--allow-breaking", help="Accept changed column types.")] = False,
    variables: VarOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate every feature file, register it, and create the generated views."""
    with _store(project, variables) as store:
        result = store.build(allow_breaking=allow_breaking, progress=_progress(not as_json))
        if as_json:
            _json(result)
            return
        for change in result.pending:
            flag = " (breaking)" if change.breaking else ""
            typer.echo(f"  {change.action:<9} {change.kind.replace('_', ' ')} {change.name}{flag}")
        typer.echo(result.summary)


@app.command()
@handles_errors
def plan(project: ProjectOpt = Path("."), variables: VarOpt = None, as_json: JsonOpt = False) -> None:
    """Show what `fsql build` would change: added, changed, updated, removed; breaking or compatible."""
    with _store(project, variables) as store:
        result = store.plan()
        if as_json:
            _json(result.changes)
            return
        if not result.pending:
            typer.echo("no changes: the registry and warehouse match the feature files")
            return
        for change in result.pending:
            kind = "breaking" if change.breaking else "compatible"
            reasons = f": {'; '.join(change.reasons)}" if change.reasons else ""
            typer.echo(f"  {change.action:<8} {change.kind.replace('_', ' ')} {change.name} [{kind}]{reasons}")


@app.command("compile")
@handles_errors
def compile_(
    name: Annotated[str, typer.Argument(help="A feature view or training set.")],
    dialect: Annotated[str, typer.Option("--dialect", "-d", metavar="|".join(SUPPORTED_DIALECTS),
                                         help="Target SQL dialect.")] = "duckdb",
    pit_mode: PitModeOpt = "known-at",
    plan: PlanOpt = "auto",
    project: ProjectOpt = Path("."),
    variables: VarOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the exact SQL fsql would run for a view or training set, in any supported dialect
    (a training set's SQL starts with a comment naming the PIT plan chosen per view, and why)."""
    with _store(project, variables) as store:
        sql = store.compile(name, dialect, mode=check_pit_mode(pit_mode), plan=check_plan(plan))
        if as_json:
            _json({"name": name, "dialect": dialect, "sql": sql})
        else:
            typer.echo(sql)


def _view_item(view: Any) -> dict[str, Any]:
    return {
        "name": view.name,
        "kind": "feature_view",
        "version": view.version,
        "entity": view.entity,
        "entity_keys": list(view.entity_keys),
        "timestamp": view.timestamp,
        "created": view.created,
        "ttl": view.ttl,
        "owner": view.owner,
        "tags": list(view.tags),
        "description": view.description,
        "path": view.path,
        "features": [{"name": f.name, "type": f.dtype, "description": f.description} for f in view.features],
        "last_materialized_at": view.last_materialized_at,
        "watermark": view.watermark,
    }


def _set_item(training_set: Any, spine_columns: list[str]) -> dict[str, Any]:
    return {
        "name": training_set.name,
        "kind": "training_set",
        "version": training_set.version,
        "timestamp": training_set.timestamp,
        "owner": training_set.owner,
        "tags": list(training_set.tags),
        "description": training_set.description,
        "path": training_set.path,
        "features": [str(f) for f in training_set.features],
        "spine_columns": spine_columns,
        "models": list(training_set.models),
    }


def _model_item(model: Any) -> dict[str, Any]:
    from fsql.registry import model_fingerprint

    return {
        "name": model.name,
        "kind": "model",
        "version": model_fingerprint(model)[:12],
        "model_kind": model.kind,
        "training_set": model.training_set,
        "path": model.path,
        "entry_point": model.entry_point,
        "digest": model.digest,
        "inputs": list(model.inputs),  # the order the model is fed, recorded at build
        "request_fields": {f.name: f.dtype for f in model.request_fields},
        "batching": {"max_batch": model.max_batch, "max_wait_ms": model.max_wait_ms},
    }


KINDS = {"view": "view", "feature_view": "view", "training_set": "training_set", "set": "training_set",
         "model": "model", "source": "source"}


def _kind(kind: str | None) -> Any:
    if kind is None:
        return None
    if kind not in KINDS:
        raise RequestError(f"unknown --kind '{kind}'", hint="use view, training_set or model")
    return KINDS[kind]


def _describe_item(store: Any, name: str, kind: str | None) -> dict[str, Any]:
    """A view or training set by that name first (the model of a set often shares its name), else a
    model; ``kind`` picks one."""
    if kind == "model":
        return _model_item(store.model(name))
    try:
        record = store.describe(name)
    except NotFoundError:
        if kind is None and name in {m.name for m in store.models()}:
            return _model_item(store.model(name))
        raise
    is_view = hasattr(record, "entity")
    if kind is not None and kind != ("view" if is_view else "training_set"):
        raise NotFoundError(f"no {kind.replace('_', ' ')} named '{name}'", hint="run `fsql ls`")
    return _view_item(record) if is_view else _set_item(record, _spine_columns(store, name))


def _spine_columns(store: Any, name: str) -> list[str]:
    return [c.name for c in store.definition(name).spine_columns]


@app.command("ls")
@handles_errors
def ls(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List the registered feature views, training sets and models."""
    with _store(project) as store:
        items = [_view_item(v) for v in store.views()]
        items += [_set_item(s, _spine_columns(store, s.name)) for s in store.training_set_records()]
        items += [_model_item(m) for m in store.models()]
        if as_json:
            _json(items)
            return
        if not items:
            typer.echo("nothing registered yet; run `fsql build`")
            return
        for item in items:
            if item["kind"] == "model":
                inputs = f"{len(item['inputs'])} input" + ("" if len(item["inputs"]) == 1 else "s")
                typer.echo(f"{item['name']:<28} model {item['model_kind'] + ' <- ' + item['training_set']:<18} "
                           f"{inputs:<12} v{item['version']}")
                continue
            count = len(item["features"])
            features = f"{count} feature" + ("" if count == 1 else "s")
            if item["kind"] == "feature_view":
                fresh = item.get("last_materialized_at")
                note = f"  materialized {fresh:%Y-%m-%d %H:%M:%S}" if fresh else "  never materialized"
                typer.echo(f"{item['name']:<28} view  {item['entity']:<18} {features:<12} v{item['version']}{note}")
            else:
                typer.echo(f"{item['name']:<28} set   {'':<18} {features:<12} v{item['version']}")


@app.command()
@handles_errors
def describe(
    name: str,
    history: Annotated[bool, typer.Option("--history", help="List every version: fingerprint, when, git commit, verdict, runs.")] = False,
    kind: KindOpt = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Show one feature view, training set or model: keys, timing, features with types and
    descriptions; for a model its training set and input order."""
    with _store(project) as store:
        if history:
            _print_history(store.revisions(name), as_json)
            return
        item = _describe_item(store, name, _kind(kind))
        if as_json:
            _json(item)
            return
        if item["kind"] == "model":
            inputs = item.pop("inputs")
            fields = item.pop("request_fields")
            for key, value in item.items():
                if isinstance(value, dict):
                    typer.echo(f"{key}: {', '.join(f'{k}={v}' for k, v in value.items())}")
                elif value not in (None, ""):
                    typer.echo(f"{key}: {value}")
            typer.echo("inputs (in the order the model takes them):")
            for position, input_name in enumerate(inputs, 1):
                note = f"request field, {fields[input_name]}" if input_name in fields else "training set feature"
                typer.echo(f"  {position:>2}. {input_name:<28} {note}")
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
            elif isinstance(value, timedelta):
                typer.echo(f"{key}: {_duration(value)}")
            elif isinstance(value, list) and value:
                typer.echo(f"{key}: {', '.join(map(str, value))}")
            elif value not in (None, [], ""):
                typer.echo(f"{key}: {value}")


@app.command()
@handles_errors
def lineage(
    name: str,
    transitive: Annotated[bool, typer.Option("--transitive", help="Follow edges all the way to sources and models.")] = False,
    kind: KindOpt = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Column-level lineage of a view or training set, or of one feature (NAME.FEATURE: up to source
    columns, down to training sets and models): what it reads and what reads it."""
    with _store(project) as store:
        if "." in name:
            _print_feature_lineage(store.feature_lineage(name), as_json)
            return
        graph = store.lineage(name, kind=_kind(kind), transitive=transitive)
        if as_json:
            _json(graph)
            return

        def show(edge: Any) -> str:
            down = f"{edge.downstream_name}.{edge.downstream_column}" if edge.downstream_column else edge.downstream_name
            up = f"{edge.upstream_name}.{edge.upstream_column}" if edge.upstream_column else edge.upstream_name
            if edge.downstream_kind != graph.kind or edge.downstream_name != graph.name:
                down = f"{edge.downstream_kind.replace('_', ' ')} {down}"  # a reader: say what it is
            return f"  {down:<40} <- {edge.upstream_kind.replace('_', ' ')} {up}"

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
def search(
    text: Annotated[str, typer.Argument(help="Words to find; every word must match.")] = "",
    owner: Annotated[str | None, typer.Option("--owner", help="Only objects with this owner.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only objects with this tag.")] = None,
    entity: Annotated[str | None, typer.Option("--entity", help="Only views (and their features) of this entity.")] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Search views, features and training sets by name, feature name, tag, owner and description,
    ranked in that order."""
    with _store(project) as store:
        hits = store.search_ranked(text, owner=owner, tag=tag, entity=entity)
        if as_json:
            _json(hits)
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
        raise RequestError(f"{what} '{value}' is not an ISO timestamp",
                           hint="e.g. 2026-01-31 or 2026-01-31T12:00:00+00:00 (naive times are UTC)") from None


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@app.command()
@handles_errors
def materialize(
    views: Annotated[list[str] | None, typer.Argument(help="Views to materialize (default: all).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Recompute from the start instead of the watermark.")] = False,
    start: Annotated[str | None, typer.Option(help="Backfill window start (exclusive), ISO time; naive is UTC.")] = None,
    end: Annotated[str | None, typer.Option(help="Window end (inclusive), ISO time; default now.")] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Upsert the latest values per entity into the online store (incremental from the watermark)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    window = {"start": _parse_time(start, "--start"), "end": _parse_time(end, "--end")}
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the run in progress is recorded as failed at once.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with _store(project) as store:
        began = time.perf_counter()
        if sys.stderr.isatty() and not as_json:
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

                results = store.materialize(views or None, full=full, progress=report, **window)
        else:
            results = store.materialize(views or None, full=full, **window)
        if as_json:
            _json(results)
            return
        total = sum(r.rows for r in results)
        for r in results:
            rate = f"{r.rows / r.seconds:,.0f} rows/s" if r.seconds > 0 else ""
            span = f"({r.start.isoformat() if r.start else '-inf'}, {r.end.isoformat()}]"
            typer.echo(f"  {r.view:<28} {r.outcome:<8} {r.rows:>9,} rows  {span}  {rate}")
        count = len(results)
        typer.echo(f"materialized {count} view{'' if count == 1 else 's'}, {total:,} rows "
                   f"in {time.perf_counter() - began:.2f}s")


@app.command("runs")
@handles_errors
def runs_(
    view: Annotated[str, typer.Argument(help="A feature view.")],
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs, newest first.")] = 20,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """The view's latest materialization runs: outcome, rows, window, who ran it, and why one failed."""
    with _store(project) as store:
        store.definition(view)  # an unknown name is an error, not an empty list
        records = store.runs(view, limit=limit)
    if as_json:
        _json(records)
        return
    if not records:
        typer.echo(f"no materialization runs of {view} yet: run `fsql materialize {view}`")
    for run in records:
        rows = f"{run.rows:,} rows" if run.rows is not None else "-"
        who = f"pid {run.pid} on {run.host}" if run.pid is not None else ""
        error = f"  {run.error}" if run.error else ""
        typer.echo(f"  {run.id:<6} {run.outcome:<8} {run.started_at:%Y-%m-%d %H:%M:%S}  {rows:>14}  {who}{error}")


@app.command()
@handles_errors
def get(
    name: Annotated[str, typer.Argument(help="A feature view, training set, or view.feature.")],
    entity: Annotated[list[str], typer.Option("--entity", "-e", metavar="KEY=VALUE", help="key=value; repeat for composite keys or several entities.")],
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Read online values for one or more entities, each with its status
    (present, missing, stale, not_materialized). JSON writes non-finite floats as "NaN"/"Infinity"."""
    columns: dict[str, list[str]] = {}
    for item in entity:
        key, value = _pair(item, "--entity", "customer_id=42")
        columns.setdefault(key, []).append(value)
    with _store(project) as store:
        result = store.reader().read(name, columns)
        rows = result.to_dicts()
        if as_json:
            _json(rows)
            return
        hints = set()
        for row in rows:
            for key, value in row.items():
                if not key.endswith("__status"):
                    status = row.get(f"{key}__status")
                    if status == "not_materialized":
                        hints.add(key)
                    typer.echo(f"{key:<32} {_cell(value):<24} {status or ''}")
            typer.echo("")
        if hints:
            typer.echo("hint: some values are not materialized yet; run `fsql materialize`", err=True)


@app.command("training-set")
@handles_errors
def training_set(
    name: Annotated[str, typer.Argument(help="A training set defined in features/.")],
    spine: Annotated[str | None, typer.Option(help="A source name, a SQL query, or a .parquet/.csv file; default: the set's own spine.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output: a .parquet, .csv or .jsonl file, or a directory (DIR/) of Parquet files written by the engine.")] = Path("training_set.parquet"),
    pit_mode: PitModeOpt = "known-at",
    plan: PlanOpt = "auto",
    project: ProjectOpt = Path("."),
    variables: VarOpt = None,
) -> None:
    """Compute a point-in-time correct training set and write it to a file."""

    fmt = OUTPUT_FORMATS.get(output.suffix.lower())
    if not output.suffix:
        # A directory: Parquet files written by the engine itself (for sets larger than memory).
        with _store(project, variables) as store:
            began = time.perf_counter()
            written = store.write_training_set(output, name, spine=spine, pit_mode=check_pit_mode(pit_mode),
                                               plan=check_plan(plan))
            typer.echo(f"wrote {written.rows:,} rows in {written.files} Parquet files to {output}/ "
                       f"in {time.perf_counter() - began:.2f}s")
        return
    if fmt is None:
        raise RequestError(f"cannot write '{output}': unknown file type '{output.suffix}'",
                           hint="use a .parquet, .csv or .jsonl file name")
    with _store(project, variables) as store:
        spine_data = _spine_arg(spine)
        began = time.perf_counter()
        if sys.stderr.isatty():
            from rich.console import Console

            with Console(stderr=True).status(f"computing training set {name}..."):
                frame = store.training_set(name, spine=spine_data, pit_mode=check_pit_mode(pit_mode), plan=check_plan(plan))
        else:
            frame = store.training_set(name, spine=spine_data, pit_mode=check_pit_mode(pit_mode), plan=check_plan(plan))
        output.parent.mkdir(parents=True, exist_ok=True)
        {"parquet": frame.write_parquet, "csv": frame.write_csv, "json": frame.write_ndjson}[fmt](output)
        typer.echo(f"wrote {frame.height:,} rows x {frame.width} columns to {output} in {time.perf_counter() - began:.2f}s")


@app.command()
@handles_errors
def query(
    sql: Annotated[str, typer.Argument(help="A SELECT over the generated views, e.g. \"SELECT * FROM customer_spend__latest\".")],
    limit: Annotated[int, typer.Option(help="Rows to print at most (the query itself is not changed).")] = 20,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Run plain SQL on the warehouse; unqualified names are the generated views and sources."""
    import polars as pl

    with _store(project) as store:
        frame = store.query(sql)
        if as_json:
            _json(frame.head(limit).to_dicts())
            return
        with pl.Config(tbl_rows=limit, tbl_cols=-1, tbl_width_chars=200):
            typer.echo(frame.head(limit))
        if frame.height > limit:
            typer.echo(f"({frame.height:,} rows; showing {limit})")


# Catalog commands ------------------------------------------------------------------------------------


def _print_history(revisions: list[Any], as_json: bool) -> None:
    if as_json:
        _json([{k: v for k, v in r.to_dict().items() if k != "definition"} for r in revisions])
        return
    for r in revisions:
        verdict = "breaking" if r.breaking else "compatible"
        commit = (r.git_commit or "-")[:12] + ("+dirty" if (r.git_commit or "").endswith("+dirty") else "")
        mark = "*" if r.current else " "
        typer.echo(f"{mark} r{r.revision:<3} {r.version}  {r.created_at:%Y-%m-%d %H:%M:%S}  git {commit:<18} "
                   f"{verdict:<10} {'; '.join(r.reasons)}")
        for run in r.runs:
            rows = f"{run.rows:,} rows" if run.rows is not None else ""
            typer.echo(f"        run {run.id:<5} {run.outcome:<8} {run.started_at:%Y-%m-%d %H:%M:%S}  {rows}")


def _print_feature_lineage(graph: Any, as_json: bool) -> None:
    if as_json:
        _json(graph)
        return

    def end(kind: str, name: str, column: str | None) -> str:
        return f"{kind} {name}.{column}" if column else f"{kind} {name}"

    typer.echo(f"feature {graph.view}.{graph.feature} v{graph.version}")
    if graph.upstream:
        typer.echo("reads:")
        for e in graph.upstream:
            typer.echo(f"  {e.downstream_name}.{e.downstream_column or '*':<30} <- "
                       f"{end(e.upstream_kind, e.upstream_name, e.upstream_column)}")
    if graph.downstream:
        typer.echo("read by:")
        for e in graph.downstream:
            source = f"{e.upstream_name}.{e.upstream_column}" if e.upstream_column else e.upstream_name
            typer.echo(f"  {source:<40} -> {end(e.downstream_kind, e.downstream_name, e.downstream_column)}")


# Serving and models ------------------------------------------------------------------------------------


@app.command()
@handles_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8766,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    no_batching: Annotated[bool, typer.Option("--no-batching", help="Score each predict request alone.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Serve online features and model predictions over HTTP (POST /v1/features, /v1/models/NAME/predict)."""
    from fsql.server import serve as run

    run(project, host=host, port=port, workers=workers, batching=not no_batching)


@app.command()
@handles_errors
def predict(
    model: Annotated[str, typer.Argument(help="A model declared under [models] in fsql.toml.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file: .parquet, .csv or .jsonl.")],
    spine: Annotated[str | None, typer.Option(help="Spine: a .parquet/.csv file, a source or view name, or a SELECT; default: the training set's own.")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Score a spine in batch: the model's training set point-in-time, then the model (same code as serving)."""

    fmt = OUTPUT_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise RequestError(f"cannot write '{output}': unknown file type '{output.suffix}'",
                           hint="use a .parquet, .csv or .jsonl file name")
    with _store(project) as store:
        spine_data = _spine_arg(spine)
        began = time.perf_counter()
        frame = store.predict(model, spine=spine_data)
        output.parent.mkdir(parents=True, exist_ok=True)
        {"parquet": frame.write_parquet, "csv": frame.write_csv, "json": frame.write_ndjson}[fmt](output)
        typer.echo(f"scored {frame.height:,} rows with {model}; wrote {output} in {time.perf_counter() - began:.2f}s")


@app.command()
@handles_errors
def skew(
    model: Annotated[str, typer.Argument(help="A served model.")],
    since: Annotated[str | None, typer.Option(help="Only requests served from this time on (ISO).")] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Compare the features served for MODEL (the server's log) with the training set recomputed
    point-in-time at each request's time: per feature, the share of rows that differ."""
    with _store(project) as store:
        report = store.skew(model, since=_parse_time(since, "--since"))
    if as_json:
        _json(report.to_dict())
    else:
        typer.echo(f"{model}: {report.rows:,} served rows compared, {report.differing:,} differing values")
        for feature in report.features:
            typer.echo(f"  {feature.feature:<28} {feature.differing:>7,} differ ({feature.share:.2%})")
            for example in feature.examples:
                typer.echo(f"      e.g. {example}")
    if report.differing:
        raise typer.Exit(2)


@app.command()
@handles_errors
def diff(
    name: Annotated[str, typer.Argument(help="A feature view or training set.")],
    old: Annotated[str | None, typer.Argument(help="Revision number or version hash (default: the one before NEW).")] = None,
    new: Annotated[str | None, typer.Argument(help="Revision number or version hash (default: the current one).")] = None,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Compare two versions of a view: the SQL change and each changed column with its verdict."""
    with _store(project) as store:
        result = store.diff(name, old, new)
        if as_json:
            _json(result)
            return
        verdict = "breaking" if result.breaking else "compatible"
        typer.echo(f"{name}: r{result.old.revision} ({result.old.version}) -> r{result.new.revision} "
                   f"({result.new.version}): {result.action}, {verdict}")
        for reason in result.reasons:
            typer.echo(f"  - {reason}")
        for column in result.columns:
            flag = "breaking" if column["breaking"] else "compatible"
            detail = f" ({column['detail']})" if column["detail"] else ""
            typer.echo(f"  {column['name']:<28} {column['action']:<11} {flag}{detail}")
        if result.sql_diff:
            typer.echo("")
            for line in result.sql_diff:
                typer.echo(line)


@app.command()
@handles_errors
def check(project: ProjectOpt = Path("."), variables: VarOpt = None, as_json: JsonOpt = False) -> None:
    """Parse and validate every feature file and apply the [governance] rules, touching no database."""
    with _store(project, variables) as store:
        result = store.check()
        if as_json:
            _json(result)
        else:
            for violation in result.violations:
                typer.echo(str(violation), err=True)
            if result.ok:
                typer.echo(f"ok: {len(result.views)} feature views and {len(result.training_sets)} training sets")
        if not result.ok:
            raise typer.Exit(1)


@app.command()
@handles_errors
def stats(
    view: Annotated[str, typer.Argument(help="A feature view.")],
    at: Annotated[str | None, typer.Option("--at", help="Describe the data as known at this ISO time (default now).")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Over the latest row per entity instead of the history.")] = False,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Compute per-feature statistics in the engine and store them in the registry."""
    with _store(project) as store:
        records = store.compute_stats(view, at=_parse_time(at, "--at"), scope="latest" if latest else "history")
        if as_json:
            _json(records)
            return
        if records:
            first = records[0]
            typer.echo(f"{view} v{first.version} {first.scope} as of {first.as_of:%Y-%m-%d %H:%M:%S}: "
                       f"{first.stats['rows']:,} rows, {first.stats['entities']:,} entities")

        def num(value: Any) -> str:
            if value is None:
                return "-"
            return f"{value:.4g}" if isinstance(value, float) else str(value)

        for r in records:
            s = r.stats
            nulls = "-" if s["null_rate"] is None else f"{s['null_rate']:.1%}"
            line = f"  {r.feature:<28} {s['dtype']:<10} nulls {nulls:>6}  distinct {s['distinct']:>8,}"
            if s.get("numeric"):
                line += "  " + "  ".join(f"{k} {num(s.get(k))}" for k in ("min", "p1", "p50", "mean", "p99", "max", "std"))
            else:
                line += f"  min {num(s['min'])}  max {num(s['max'])}"
            typer.echo(line)


@app.command()
@handles_errors
def ui(
    project: ProjectOpt = Path("."),
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8765,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a browser.")] = True,
) -> None:
    """Serve the catalog page on 127.0.0.1 (read-only; reads only the registry)."""
    import threading
    import webbrowser

    import uvicorn

    from fsql.server.catalog import catalog_app

    with _store(project) as store:
        url = f"http://127.0.0.1:{port}/"
        typer.echo(f"catalog of {store.config.name} at {url} (Ctrl+C to stop)")
        if open_browser:
            threading.Timer(0.8, lambda: webbrowser.open(url)).start()
        uvicorn.run(catalog_app(store), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    app()
