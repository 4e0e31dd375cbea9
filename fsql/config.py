"""fsql.toml → typed configuration, with every default in this module.

The warehouse, online store and registry are tagged variants: the tag (``engine`` / ``store``) picks
the dataclass, so code downstream matches on the type instead of checking strings. Secrets come from
environment variables written as ``${VAR}`` (or ``${VAR:-default}``); they are never stored in the file.
This module imports nothing from fsql but its errors.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from fsql.errors import ConfigError, did_you_mean

CONFIG_FILE = "fsql.toml"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REGISTRY_URL = "sqlite:///.fsql/registry.db"
DEFAULT_ONLINE_PATH = ".fsql/online.db"
DEFAULT_WAREHOUSE_PATH = ".fsql/warehouse.duckdb"
DEFAULT_SPARK_MASTER = "local[2]"
DEFAULT_SPARK_CATALOG = ".fsql/spark"
# The one list of SQL dialects fsql compiles to (feature files may be written in any of them); the
# compiler holds one capability row per entry.
SUPPORTED_DIALECTS = (
    "duckdb", "postgres", "snowflake", "bigquery", "spark", "trino", "redshift", "databricks", "presto", "athena",
)
MODEL_KINDS = ("onnx", "sklearn", "python")
# The types a model's request-time fields may declare, by the family of JSON values each accepts.
REQUEST_TYPES = {"DOUBLE": "float", "FLOAT": "float", "REAL": "float", "BIGINT": "integer", "INTEGER": "integer",
                 "INT": "integer", "VARCHAR": "string", "STRING": "string", "TEXT": "string", "BOOLEAN": "boolean",
                 "BOOL": "boolean"}


@dataclass(frozen=True)
class DuckDBWarehouse:
    path: str = DEFAULT_WAREHOUSE_PATH
    schema: str = "fsql"
    engine: str = "duckdb"
    # DuckDB's ASOF join needs no index, so training sets read the live views.
    persists_history = False

    @property
    def locks_file(self) -> bool:
        """An open DuckDB file excludes writers in other processes: hold it only during a call."""
        return self.path != ":memory:"


@dataclass(frozen=True)
class PostgresWarehouse:
    url: str = field(default=DEFAULT_POSTGRES_URL, repr=False)  # may hold a password
    schema: str = "fsql"
    # "table": training sets read `<view>__history`, a persisted copy with a covering index (fast PIT
    # joins; refreshed by build and materialize); "view": they read the live view (no copy, slower).
    history: str = "table"
    engine: str = "postgres"
    locks_file = False

    @property
    def persists_history(self) -> bool:
        return self.history == "table"


@dataclass(frozen=True)
class SparkWarehouse:
    # exactly one of master (a classic session, local or cluster) or remote (Spark Connect, sc://...)
    master: str = DEFAULT_SPARK_MASTER
    remote: str | None = None
    # extra Spark settings (spark.executor.memory, a Hive metastore...), values as strings
    conf: tuple[tuple[str, str], ...] = ()
    schema: str = "fsql"
    # where the engine keeps the DDL of the generated views, replayed into each new session
    catalog_dir: str = DEFAULT_SPARK_CATALOG
    engine: str = "spark"
    persists_history = False
    locks_file = False


Warehouse = DuckDBWarehouse | PostgresWarehouse | SparkWarehouse


@dataclass(frozen=True)
class SqliteOnline:
    path: str = DEFAULT_ONLINE_PATH
    store: str = "sqlite"


@dataclass(frozen=True)
class RedisOnline:
    url: str = field(default=DEFAULT_REDIS_URL, repr=False)  # may hold a password; a cluster: seed nodes, comma-separated
    prefix: str = "fsql"
    store: str = "redis"
    cluster: bool = False


Online = SqliteOnline | RedisOnline


@dataclass(frozen=True)
class RegistryConfig:
    url: str = field(default=DEFAULT_REGISTRY_URL, repr=False)  # may hold a password


@dataclass(frozen=True)
class EntityConfig:
    name: str
    keys: tuple[str, ...]
    description: str | None
    line: int


@dataclass(frozen=True)
class SourceConfig:
    name: str
    path: str | None
    table: str | None
    format: str | None
    description: str | None
    line: int


@dataclass(frozen=True)
class Batching:
    max_batch: int = 64
    max_wait_ms: float = 2.0


@dataclass(frozen=True)
class ModelConfig:
    name: str
    training_set: str
    kind: str  # one of MODEL_KINDS
    path: str | None  # model file (onnx, sklearn), project-relative
    entry_point: str | None  # module:function (python)
    batching: Batching
    line: int
    # Values the caller sends with each prediction request (name, type), not read from the online store;
    # fed to the model after the training set's features unless the model names its inputs' order.
    request_fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: what `fsql serve` accepts. API keys are read from the environment variable named
    by ``api_key_env`` (comma-separated keys); unset or empty means no authentication."""

    api_key_env: str | None = None
    max_body_bytes: int = 1_048_576
    max_entities: int = 1_000
    log_features: bool = True  # served features, statuses and predictions → .fsql/logs/<model>/
    log_feature_requests: bool = False  # what POST /v1/features served → .fsql/logs/features/
    log_queue: int = 10_000  # rows waiting to be written; when full, rows are dropped and counted
    log_level: str = "warning"  # uvicorn's log level
    access_log: bool = False
    reload_poll_s: float = 1.0  # how often the registry version is polled for a new build


@dataclass(frozen=True)
class Governance:
    """Catalog rules `fsql build` and `fsql check` enforce on feature files; all off by default."""

    require_owner: bool = False
    require_description: bool = False  # on views, training sets and every feature column
    allowed_tags: tuple[str, ...] | None = None  # None: any tag
    require_ttl: bool = False
    max_ttl: timedelta | None = None
    view_name_pattern: str | None = None  # a regular expression the whole name must match
    feature_name_pattern: str | None = None
    line: int = 0

    @property
    def enabled(self) -> bool:
        return self != Governance(line=self.line)


@dataclass(frozen=True)
class Config:
    root: Path
    name: str
    dialect: str = "duckdb"
    warehouse: Warehouse = field(default_factory=DuckDBWarehouse)
    online: Online = field(default_factory=SqliteOnline)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    entities: dict[str, EntityConfig] = field(default_factory=dict)
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    server: ServerConfig = field(default_factory=ServerConfig)
    vars: dict[str, Any] = field(default_factory=dict)
    governance: Governance = field(default_factory=Governance)
    features_dir: str = "features"
    macros_dir: str = "macros"

    @property
    def path(self) -> Path:
        return self.root / CONFIG_FILE

    def resolve(self, relative: str) -> Path:
        """A project-relative path made absolute (paths in fsql.toml are relative to the project)."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def source_locations(self) -> dict[str, str | None]:
        """Where each file source resolves from this project's folder (None for a table source): the
        registry keeps it, so a build notices a project that was copied or moved."""
        return {name: str(self.resolve(s.path)) if s.path else None for name, s in self.sources.items()}


# The keys each section accepts; named sub-tables ([entities.X], [sources.X], [models.X]) take theirs.
_SECTIONS: dict[str, set[str]] = {
    "project": {"name", "dialect", "features_dir", "macros_dir"},
    "warehouse": {"engine", "path", "url", "schema", "history", "master", "remote", "conf", "catalog_dir"},
    "online": {"store", "path", "url", "prefix", "cluster"},
    "registry": {"url"},
    "vars": set(),
    "entities": set(),
    "sources": set(),
    "models": set(),
    "server": {f.name for f in fields(ServerConfig)},
    "governance": {"require_owner", "require_description", "allowed_tags", "require_ttl", "max_ttl",
                   "view_name_pattern", "feature_name_pattern"},
}
_ENTITY_KEYS = {"keys", "description"}
_SOURCE_KEYS = {"path", "table", "format", "description"}
_MODEL_KEYS = {"training_set", "kind", "path", "entry_point", "batching", "request_fields"}
_BATCHING_KEYS = {"max_batch", "max_wait_ms"}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _File:
    """fsql.toml's text, for error locations and environment expansion."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines()

    def line_of(self, *needles: str) -> int | None:
        """The 1-based line where a table header or key appears."""
        for needle in needles:
            for i, line in enumerate(self.lines, 1):
                if line.strip().startswith(needle):
                    return i
        return None

    def table_line(self, section: str) -> int | None:
        return self.line_of(f"[{section}]")

    def error(self, message: str, *, line: int | None = None, hint: str | None = None) -> ConfigError:
        return ConfigError(message, path=CONFIG_FILE, line=line, hint=hint)

    def check_keys(self, body: Mapping[str, Any], allowed: set[str], section: str) -> None:
        for key in body:
            if key not in allowed:
                raise self.error(
                    f"unknown key '{key}' in [{section}]",
                    line=self.line_of(f"{key} ", f"{key}=") or self.table_line(section),
                    hint=did_you_mean(key, allowed) or f"keys are {', '.join(sorted(allowed))}",
                )

    def table(self, body: Any, section: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise self.error(f"[{section}] must be a table", line=self.table_line(section))
        self.check_keys(body, allowed, section)
        return body

    def env(self, value: Any, what: str, section: str) -> Any:
        if not isinstance(value, str):
            return value

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise self.error(f"{what} refers to environment variable {name}, which is not set",
                             line=self.table_line(section), hint=f"export {name}=... or write ${{{name}:-default}}")

        return _ENV.sub(repl, value)

    def choice(self, value: str, choices: Mapping[str, Any] | tuple[str, ...], what: str, key: str) -> None:
        if value not in choices:
            names = list(choices)
            raise self.error(f"unknown {what} '{value}'", line=self.line_of(key),
                             hint=did_you_mean(str(value), names) or f"use one of {', '.join(names)}")


def load_config(root: str | Path = ".", overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read ``fsql.toml`` under ``root``; ``overrides`` replace whole keys per section (SDK use)."""
    root = Path(root).resolve()
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"no {CONFIG_FILE} in {root.name or root}", path=CONFIG_FILE,
                          hint="run `fsql init DIR` to create a project, or cd into one")
    file = _File(path.read_text())
    try:
        data = tomllib.loads(file.text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise file.error(f"invalid TOML: {msg}", line=int(m.group(1)) if m else None) from None
    for section, body in (overrides or {}).items():
        data.setdefault(section, {}).update(body)
    for section in data:
        if section not in _SECTIONS:
            raise file.error(f"unknown section [{section}]", line=file.line_of(f"[{section}"),
                             hint=did_you_mean(section, _SECTIONS) or f"sections are {', '.join(sorted(_SECTIONS))}")
        file.table(data[section], section, _SECTIONS[section] or set(data[section]))

    project = data.get("project", {})
    dialect = project.get("dialect", "duckdb")
    file.choice(dialect, SUPPORTED_DIALECTS, "dialect", "dialect")
    return Config(
        root=root,
        name=project.get("name") or root.name,
        dialect=dialect,
        warehouse=_warehouse(file, data.get("warehouse", {})),
        online=_online(file, data.get("online", {})),
        registry=RegistryConfig(url=file.env(data.get("registry", {}).get("url", DEFAULT_REGISTRY_URL),
                                             "[registry] url", "registry")),
        entities=_named(file, data, "entities", _ENTITY_KEYS, _entity),
        sources=_named(file, data, "sources", _SOURCE_KEYS, _source),
        models=_named(file, data, "models", _MODEL_KEYS, _model),
        server=_server(file, data.get("server", {})),
        vars=dict(data.get("vars", {})),
        governance=_governance(file, data.get("governance", {})),
        features_dir=project.get("features_dir", "features"),
        macros_dir=project.get("macros_dir", "macros"),
    )


def _variant(cls: type, values: dict[str, Any]) -> Any:
    """The dataclass built from the keys it declares (a tag's other keys belong to other variants)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _warehouse(file: _File, body: dict[str, Any]) -> Warehouse:
    values = {k: file.env(v, f"[warehouse] {k}", "warehouse") for k, v in body.items()}
    variants = {"duckdb": DuckDBWarehouse, "postgres": PostgresWarehouse, "spark": SparkWarehouse}
    engine = values.pop("engine", "duckdb")
    file.choice(engine, variants, "warehouse engine", "engine")
    if engine == "spark":
        values.update(_spark(file, body))
    if engine == "postgres":
        if values.get("history", "table") not in ("table", "view"):
            raise file.error(f"[warehouse] history must be 'table' or 'view', not '{values['history']}'",
                             line=file.line_of("history"))
        values["url"] = values.get("url") or os.environ.get("FSQL_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    warehouse = _variant(variants[engine], values)
    if not _IDENT.match(warehouse.schema):
        raise file.error(f"invalid warehouse schema name '{warehouse.schema}'", line=file.table_line("warehouse"))
    return warehouse


def _spark(file: _File, body: dict[str, Any]) -> dict[str, Any]:
    """The Spark-only keys: master or remote (not both), and conf as a table of scalar settings."""
    if body.get("master") and body.get("remote"):
        raise file.error("[warehouse] takes master or remote, not both", line=file.line_of("remote"),
                         hint='master = "local[2]" runs Spark in this process; remote = "sc://host:15002" is Spark Connect')
    remote = body.get("remote")
    if remote is not None:
        remote = file.env(remote, "[warehouse] remote", "warehouse")
        if not isinstance(remote, str) or not remote.startswith("sc://"):
            raise file.error(f"[warehouse] remote must be a Spark Connect URL sc://host:port, not '{remote}'",
                             line=file.line_of("remote"))
    conf = body.get("conf", {})
    if not isinstance(conf, dict) or any(isinstance(v, dict | list) for v in conf.values()):
        raise file.error("[warehouse] conf must be a table of settings", line=file.line_of("conf"),
                         hint='e.g. conf = { "spark.executor.memory" = "4g" }')
    pairs = tuple(sorted((str(k), _spark_value(file.env(v, f"[warehouse] conf.{k}", "warehouse")))
                         for k, v in conf.items()))
    return {"remote": remote, "conf": pairs}


def _spark_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _online(file: _File, body: dict[str, Any]) -> Online:
    values = {k: file.env(v, f"[online] {k}", "online") for k, v in body.items()}
    variants = {"sqlite": SqliteOnline, "redis": RedisOnline}
    store = values.pop("store", "sqlite")
    file.choice(store, variants, "online store", "store")
    if store == "redis":
        values["url"] = values.get("url") or os.environ.get("FSQL_REDIS_URL", DEFAULT_REDIS_URL)
        if not isinstance(values.get("cluster", False), bool):
            raise file.error(f"[online] cluster must be true or false, not {values['cluster']!r}",
                             line=file.line_of("cluster"), hint="cluster = true for a Redis Cluster")
    return _variant(variants[store], values)


def _named(file: _File, data: dict[str, Any], section: str, allowed: set[str],
           make: Callable[[_File, str, dict[str, Any], int], Any]) -> dict[str, Any]:
    out = {}
    for name, body in data.get(section, {}).items():
        where = f"{section}.{name}"
        out[name] = make(file, name, file.table(body, where, allowed), file.table_line(where) or 0)
    return out


def _entity(file: _File, name: str, body: dict[str, Any], line: int) -> EntityConfig:
    keys = body.get("keys")
    if isinstance(keys, str):
        keys = [keys]
    if not keys or not all(isinstance(k, str) and _IDENT.match(k) for k in keys):
        raise file.error(f"entity '{name}' needs keys = [\"column\", ...]", line=line, hint='e.g. keys = ["customer_id"]')
    return EntityConfig(name, tuple(keys), body.get("description"), line)


def _source(file: _File, name: str, body: dict[str, Any], line: int) -> SourceConfig:
    path, table = body.get("path"), body.get("table")
    if bool(path) == bool(table):
        raise file.error(f"source '{name}' needs exactly one of path = \"...\" or table = \"...\"", line=line)
    fmt = body.get("format")
    if path and fmt is None:
        fmt = "csv" if str(path).lower().endswith((".csv", ".csv.gz")) else "parquet"
    if fmt not in (None, "parquet", "csv"):
        raise file.error(f"source '{name}': unknown format '{fmt}'", line=line, hint="use parquet or csv")
    return SourceConfig(name, file.env(path, f"[sources.{name}] path", f"sources.{name}"), table, fmt,
                        body.get("description"), line)


def _model(file: _File, name: str, body: dict[str, Any], line: int) -> ModelConfig:
    if "training_set" not in body:
        raise file.error(f"model '{name}' needs training_set = \"...\"", line=line)
    if name == "features":  # .fsql/logs/features/ holds what POST /v1/features served
        raise file.error("a model cannot be named 'features'", line=line, hint="rename [models.features]")
    kind = body.get("kind", "python" if body.get("entry_point") else "onnx")
    file.choice(kind, MODEL_KINDS, "model kind", "kind")
    if kind == "python" and not body.get("entry_point"):
        raise file.error(f"model '{name}' of kind python needs entry_point = \"module:function\"", line=line)
    if kind != "python" and not body.get("path"):
        raise file.error(f"model '{name}' of kind {kind} needs path = \"models/...\"", line=line)
    batching = file.table(body.get("batching", {}), f"models.{name}.batching", _BATCHING_KEYS)
    declared = body.get("request_fields", {})
    if not isinstance(declared, dict):
        raise file.error(f"model '{name}': request_fields must be a table of name = \"TYPE\"",
                         line=file.line_of("request_fields") or line, hint='e.g. request_fields = { amount = "DOUBLE" }')
    request_fields = []
    for field_name, dtype in declared.items():
        where = file.line_of("request_fields") or line
        if not _IDENT.match(field_name):
            raise file.error(f"model '{name}': request field '{field_name}' is not a plain identifier", line=where)
        if not isinstance(dtype, str) or dtype.upper() not in REQUEST_TYPES:
            raise file.error(f"model '{name}': request field '{field_name}' has unknown type {dtype!r}", line=where,
                             hint=did_you_mean(str(dtype).upper(), REQUEST_TYPES)
                             or f"use one of {', '.join(REQUEST_TYPES)}")
        request_fields.append((field_name, dtype.upper()))
    return ModelConfig(name, body["training_set"], kind, body.get("path"), body.get("entry_point"),
                       Batching(**batching), line, tuple(request_fields))


def _server(file: _File, body: dict[str, Any]) -> ServerConfig:
    values = {k: file.env(v, f"[server] {k}", "server") for k, v in body.items()}
    for f in fields(ServerConfig):
        if f.name not in values:
            continue
        value, default = values[f.name], f.default
        ok = (isinstance(value, bool) if isinstance(default, bool)
              else isinstance(value, int | float) and not isinstance(value, bool) and value > 0
              if isinstance(default, int | float) else isinstance(value, str))
        if not ok:
            want = "true or false" if isinstance(default, bool) else (
                "a positive number" if isinstance(default, int | float) else "a string")
            raise file.error(f"[server] {f.name} must be {want}, not {value!r}", line=file.line_of(f.name))
    if values.get("api_key_env") is not None and not _IDENT.match(values["api_key_env"]):
        raise file.error(f"[server] api_key_env must name an environment variable, not {values['api_key_env']!r}",
                         line=file.line_of("api_key_env"), hint='e.g. api_key_env = "FSQL_API_KEYS"')
    if "log_level" in values and values["log_level"] not in ("critical", "error", "warning", "info", "debug"):
        raise file.error(f"[server] unknown log_level '{values['log_level']}'", line=file.line_of("log_level"),
                         hint="use critical, error, warning, info or debug")
    for name in ("max_body_bytes", "max_entities", "log_queue"):
        if name in values:
            values[name] = int(values[name])
    return ServerConfig(**values)


_TTL = re.compile(r"^(\d+)\s*(w|d|h|m|s)$")
_TTL_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def _governance(file: _File, body: dict[str, Any]) -> Governance:
    line = file.table_line("governance") or 0
    values: dict[str, Any] = {"line": line}
    for key in ("require_owner", "require_description", "require_ttl"):
        if key in body:
            if not isinstance(body[key], bool):
                raise file.error(f"[governance] {key} must be true or false", line=file.line_of(key) or line)
            values[key] = body[key]
    if "allowed_tags" in body:
        tags = body["allowed_tags"]
        if not isinstance(tags, list) or not all(isinstance(x, str) and x for x in tags):
            raise file.error("[governance] allowed_tags must be a list of strings", line=file.line_of("allowed_tags")
                             or line, hint='e.g. allowed_tags = ["orders", "finance"]')
        values["allowed_tags"] = tuple(tags)
    if "max_ttl" in body:
        m = _TTL.match(str(body["max_ttl"]).strip())
        if not m or int(m.group(1)) <= 0:
            raise file.error(f"[governance] max_ttl '{body['max_ttl']}' is not a duration",
                             line=file.line_of("max_ttl") or line, hint="e.g. max_ttl = \"90d\" (units w, d, h, m, s)")
        values["max_ttl"] = timedelta(**{_TTL_UNITS[m.group(2)]: int(m.group(1))})
    for key in ("view_name_pattern", "feature_name_pattern"):
        if key in body:
            try:
                re.compile(str(body[key]))
            except re.error as e:
                raise file.error(f"[governance] {key} is not a regular expression: {e}",
                                 line=file.line_of(key) or line) from None
            values[key] = str(body[key])
    return Governance(**values)
