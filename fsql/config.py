"""fsql.toml → typed configuration.

The warehouse, online store and registry are tagged variants: the tag (``engine`` / ``store``) picks
the dataclass, so code downstream matches on the type instead of checking strings. Secrets come from
environment variables written as ``${VAR}`` (or ``${VAR:-default}``); they are never stored in the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsql.errors import ConfigError, did_you_mean

CONFIG_FILE = "fsql.toml"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The one list of SQL dialects fsql compiles to (feature files may be written in any of them); the
# compiler holds one capability row per entry.
SUPPORTED_DIALECTS = (
    "duckdb", "postgres", "snowflake", "bigquery", "spark", "trino", "redshift", "databricks", "presto", "athena",
)


@dataclass(frozen=True)
class DuckDBWarehouse:
    path: str = ".fsql/warehouse.duckdb"
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
    url: str = DEFAULT_POSTGRES_URL
    schema: str = "fsql"
    # "table": training sets read `<view>__history`, a persisted copy with a covering index (fast PIT
    # joins; refreshed by build and materialize); "view": they read the live view (no copy, slower).
    history: str = "table"
    engine: str = "postgres"

    locks_file = False

    @property
    def persists_history(self) -> bool:
        return self.history == "table"


Warehouse = DuckDBWarehouse | PostgresWarehouse


@dataclass(frozen=True)
class SqliteOnline:
    path: str = ".fsql/online.db"
    store: str = "sqlite"


@dataclass(frozen=True)
class RedisOnline:
    url: str = DEFAULT_REDIS_URL
    prefix: str = "fsql"
    store: str = "redis"


Online = SqliteOnline | RedisOnline


@dataclass(frozen=True)
class RegistryConfig:
    url: str = "sqlite:///.fsql/registry.db"


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
class ModelConfig:
    name: str
    training_set: str
    path: str | None
    entry_point: str | None
    line: int


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
    vars: dict[str, Any] = field(default_factory=dict)
    features_dir: str = "features"
    macros_dir: str = "macros"

    @property
    def path(self) -> Path:
        return self.root / CONFIG_FILE

    def resolve(self, relative: str) -> Path:
        """A project-relative path made absolute (paths in fsql.toml are relative to the project)."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p


_SECTIONS: dict[str, set[str]] = {
    "project": {"name", "dialect", "features_dir", "macros_dir"},
    "warehouse": {"engine", "path", "url", "schema", "history"},
    "online": {"store", "path", "url", "prefix"},
    "registry": {"url"},
    "vars": set(),
    "entities": set(),
    "sources": set(),
    "models": set(),
}
_ENTITY_KEYS = {"keys", "description"}
_SOURCE_KEYS = {"path", "table", "format", "description"}
_MODEL_KEYS = {"training_set", "path", "entry_point"}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _line_of(text: str, *needles: str) -> int | None:
    """The 1-based line where a table header or key appears, for error locations."""
    lines = text.splitlines()
    for needle in needles:
        for i, line in enumerate(lines, 1):
            stripped = line.strip()
            if stripped.startswith(needle):
                return i
    return None


def _expand_env(value: str, where: str, path: str, line: int | None) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where} refers to environment variable {name}, which is not set",
            path=path,
            line=line,
            hint=f"export {name}=... or write ${{{name}:-default}}",
        )

    return _ENV.sub(repl, value)


def load_config(root: str | Path = ".", overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read ``fsql.toml`` under ``root``; ``overrides`` replace whole keys per section (SDK use)."""
    root = Path(root).resolve()
    path = root / CONFIG_FILE
    shown = CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {CONFIG_FILE} in {root.name or root}",
            path=shown,
            hint="run `fsql init DIR` to create a project, or cd into one",
        )
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = int(m.group(1)) if m else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise ConfigError(f"invalid TOML: {msg}", path=shown, line=line) from None

    for section, body in (overrides or {}).items():
        data.setdefault(section, {}).update(body)

    for section in data:
        if section not in _SECTIONS:
            raise ConfigError(
                f"unknown section [{section}]",
                path=shown,
                line=_line_of(text, f"[{section}"),
                hint=did_you_mean(section, _SECTIONS) or f"sections are {', '.join(sorted(_SECTIONS))}",
            )
        allowed = _SECTIONS[section]
        if allowed and isinstance(data[section], dict):
            for key in data[section]:
                if key not in allowed:
                    raise ConfigError(
                        f"unknown key '{key}' in [{section}]",
                        path=shown,
                        line=_line_of(text, f"{key} ", f"{key}="),
                        hint=did_you_mean(key, allowed) or f"keys are {', '.join(sorted(allowed))}",
                    )

    def where(section: str) -> int | None:
        return _line_of(text, f"[{section}]")

    def env(value: Any, what: str, section: str) -> Any:
        return _expand_env(value, what, shown, where(section)) if isinstance(value, str) else value

    project = data.get("project", {})
    name = project.get("name") or root.name
    dialect = project.get("dialect", "duckdb")
    if dialect not in SUPPORTED_DIALECTS:
        raise ConfigError(
            f"unsupported dialect '{dialect}'",
            path=shown,
            line=_line_of(text, "dialect"),
            hint=did_you_mean(dialect, SUPPORTED_DIALECTS) or f"use one of {', '.join(SUPPORTED_DIALECTS)}",
        )

    wh = {k: env(v, f"[warehouse] {k}", "warehouse") for k, v in data.get("warehouse", {}).items()}
    engine = wh.pop("engine", "duckdb")
    warehouse: Warehouse
    if engine == "duckdb":
        wh.pop("url", None)
        wh.pop("history", None)
        warehouse = DuckDBWarehouse(**wh)
    elif engine == "postgres":
        wh.pop("path", None)
        if wh.get("history", "table") not in ("table", "view"):
            raise ConfigError(
                f"[warehouse] history must be 'table' or 'view', not '{wh['history']}'",
                path=shown,
                line=_line_of(text, "history"),
            )
        if not wh.get("url"):
            wh["url"] = os.environ.get("FSQL_POSTGRES_URL", DEFAULT_POSTGRES_URL)
        warehouse = PostgresWarehouse(**wh)
    else:
        raise ConfigError(
            f"unknown warehouse engine '{engine}'",
            path=shown,
            line=_line_of(text, "engine"),
            hint=did_you_mean(str(engine), ["duckdb", "postgres"]) or "use 'duckdb' or 'postgres'",
        )
    if not _IDENT.match(warehouse.schema):
        raise ConfigError(f"invalid warehouse schema name '{warehouse.schema}'", path=shown, line=where("warehouse"))

    on = {k: env(v, f"[online] {k}", "online") for k, v in data.get("online", {}).items()}
    store = on.pop("store", "sqlite")
    online: Online
    if store == "sqlite":
        on.pop("url", None)
        on.pop("prefix", None)
        online = SqliteOnline(**on)
    elif store == "redis":
        on.pop("path", None)
        if not on.get("url"):
            on["url"] = os.environ.get("FSQL_REDIS_URL", DEFAULT_REDIS_URL)
        online = RedisOnline(**on)
    else:
        raise ConfigError(
            f"unknown online store '{store}'",
            path=shown,
            line=_line_of(text, "store"),
            hint=did_you_mean(str(store), ["sqlite", "redis"]) or "use 'sqlite' or 'redis'",
        )

    reg = data.get("registry", {})
    registry = RegistryConfig(url=env(reg.get("url", RegistryConfig.url), "[registry] url", "registry"))

    entities: dict[str, EntityConfig] = {}
    for ename, body in data.get("entities", {}).items():
        line = where(f"entities.{ename}")
        if not isinstance(body, dict):
            raise ConfigError(f"[entities.{ename}] must be a table", path=shown, line=line)
        for key in body:
            if key not in _ENTITY_KEYS:
                raise ConfigError(
                    f"unknown key '{key}' in [entities.{ename}]",
                    path=shown,
                    line=line,
                    hint=did_you_mean(key, _ENTITY_KEYS) or "keys are 'keys' and 'description'",
                )
        keys = body.get("keys")
        if isinstance(keys, str):
            keys = [keys]
        if not keys or not all(isinstance(k, str) and _IDENT.match(k) for k in keys):
            raise ConfigError(
                f"entity '{ename}' needs keys = [\"column\", ...]",
                path=shown,
                line=line,
                hint='e.g. keys = ["customer_id"]',
            )
        entities[ename] = EntityConfig(ename, tuple(keys), body.get("description"), line or 0)

    sources: dict[str, SourceConfig] = {}
    for sname, body in data.get("sources", {}).items():
        line = where(f"sources.{sname}")
        if not isinstance(body, dict):
            raise ConfigError(f"[sources.{sname}] must be a table", path=shown, line=line)
        for key in body:
            if key not in _SOURCE_KEYS:
                raise ConfigError(
                    f"unknown key '{key}' in [sources.{sname}]",
                    path=shown,
                    line=line,
                    hint=did_you_mean(key, _SOURCE_KEYS) or "keys are path, table, format, description",
                )
        spath, table = body.get("path"), body.get("table")
        if bool(spath) == bool(table):
            raise ConfigError(
                f"source '{sname}' needs exactly one of path = \"...\" or table = \"...\"",
                path=shown,
                line=line,
            )
        fmt = body.get("format")
        if spath and fmt is None:
            lowered = str(spath).lower()
            fmt = "csv" if lowered.endswith((".csv", ".csv.gz")) else "parquet"
        if fmt not in (None, "parquet", "csv"):
            raise ConfigError(f"source '{sname}': unknown format '{fmt}'", path=shown, line=line, hint="use parquet or csv")
        sources[sname] = SourceConfig(
            sname, env(spath, f"[sources.{sname}] path", f"sources.{sname}"), table, fmt, body.get("description"), line or 0
        )

    models: dict[str, ModelConfig] = {}
    for mname, body in data.get("models", {}).items():
        line = where(f"models.{mname}")
        unknown = set(body) - _MODEL_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(
                f"unknown key '{key}' in [models.{mname}]", path=shown, line=line, hint=did_you_mean(key, _MODEL_KEYS)
            )
        if "training_set" not in body:
            raise ConfigError(f"model '{mname}' needs training_set = \"...\"", path=shown, line=line)
        models[mname] = ModelConfig(mname, body["training_set"], body.get("path"), body.get("entry_point"), line or 0)

    return Config(
        root=root,
        name=name,
        dialect=dialect,
        warehouse=warehouse,
        online=online,
        registry=registry,
        entities=entities,
        sources=sources,
        models=models,
        vars=dict(data.get("vars", {})),
        features_dir=project.get("features_dir", "features"),
        macros_dir=project.get("macros_dir", "macros"),
    )
