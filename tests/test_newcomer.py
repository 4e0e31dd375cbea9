"""The newcomer's first run: every runtime import is declared, the example's data is fresh on any day,
optional packages fail with one line, and the README's first command works on a core install."""

from __future__ import annotations

import ast
import filecmp
import hashlib
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fsql.errors import ConfigError
from fsql.sample import MARKER, PROJECT_FILES, SEED_ANCHOR, ensure_fresh, generate, scaffold

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fsql"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- every import declared --------------------------------------------------------------------------


def requirements(extra: str | None = None) -> list[Requirement]:
    project = PYPROJECT["project"]
    texts = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


@cache
def distributions_of(module: str) -> frozenset[str]:
    """The installed distributions providing a top-level module, by canonical name."""
    return frozenset(canonicalize_name(d) for d in metadata.packages_distributions().get(module, []))


def third_party(module: str) -> bool:
    return module not in sys.stdlib_module_names and module != "fsql"


def runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import, at module level or deferred into a function."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.partition(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.partition(".")[0]))
    return found


def extra_imports(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, module, extra) of every ``require_extra("module", "extra")`` call."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require_extra"
                and len(node.args) == 2 and all(isinstance(a, ast.Constant) for a in node.args)):
            found.append((node.lineno, node.args[0].value, node.args[1].value))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """A plain `pip install .` brings every package fsql imports; an optional one is only reached through
    `require_extra`, whose extra must list the package (so its one-line hint installs the right thing)."""
    core = {canonicalize_name(r.name) for r in requirements()}
    problems = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20
    checked_extras = 0
    for path in modules:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(ROOT)
        for line, module in runtime_imports(tree):
            if third_party(module):
                dists = distributions_of(module)
                if not dists:
                    problems.append(f"{where}:{line}: {module} is not installed here, so it cannot be checked")
                elif not dists & core:
                    problems.append(f"{where}:{line}: imports {module} ({', '.join(sorted(dists))}), "
                                    "not in [project] dependencies; declare it or use require_extra")
        for line, module, extra in extra_imports(tree):
            checked_extras += 1
            declared = {canonicalize_name(r.name) for r in requirements(extra)}
            if not distributions_of(module.partition(".")[0]) & declared:
                problems.append(f"{where}:{line}: require_extra({module!r}, {extra!r}) but fsql[{extra}] does not install it")
    assert not problems, "\n".join(problems)
    assert checked_extras >= 2  # the PostgreSQL engine and the PostgreSQL registry


def test_redis_with_hiredis_is_a_core_dependency() -> None:
    redis = [r for r in requirements() if canonicalize_name(r.name) == "redis"]
    assert redis and "hiredis" in redis[0].extras


# --- a core-only interpreter ------------------------------------------------------------------------


def core_closure() -> set[str]:
    """Canonical names of the distributions a plain `pip install .` brings: the core requirements and
    everything they require, with markers evaluated here."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements()]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(requirement.name) or []:
            child = Requirement(text)
            wanted = child.marker is None or any(child.marker.evaluate({"extra": e}) for e in {"", *extras})
            if wanted:
                todo.append((child, frozenset(child.extras)))
    return seen


def core_only_launcher(directory: Path) -> Path:
    """An `fsql` executable whose interpreter cannot import any installed package outside the core
    closure (pandas, psycopg, ADBC, numpy if it were undeclared ...), as in a fresh `pip install .`."""
    allowed = core_closure()
    blocked = sorted(
        module for module, dists in metadata.packages_distributions().items()
        if third_party(module) and not {canonicalize_name(d) for d in dists} & allowed
    )
    launcher = directory / "fsql"
    launcher.write_text(f"""#!{sys.executable}
import sys
from importlib.abc import MetaPathFinder

BLOCKED = frozenset({blocked!r})


class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
from fsql.cli import app

app()
""")
    launcher.chmod(0o755)
    return launcher


def readme_first_command() -> str:
    """The first ```bash block after "## The two commands", as .ci/run extracts it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The two commands"):]
    match = re.search(r"^```bash\n(.*?)^```$", section, re.M | re.S)
    assert match
    return match.group(1).strip()


def copy_of_the_clone(target: Path) -> Path:
    """The example project's files as a fresh clone has them: no Parquet, only the sample marker."""
    committed = [*(f"features/{p.name}" for p in (ROOT / "features").glob("*.sql")),
                 *(f"models/{p.name}" for p in (ROOT / "models").glob("*.onnx"))]
    for name in ("fsql.toml", *committed, str(MARKER)):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes((ROOT / name).read_bytes())
    assert not list(target.rglob("*.parquet"))
    return target


def test_readme_first_command_shows_present_values_with_core_packages_only(tmp_path: Path) -> None:
    """The README's first command (its `pip install` part aside) on a fresh copy of the root project,
    with only the packages a plain `pip install .` brings importable: present values for customer 42."""
    command = readme_first_command()
    install, sep, run = command.partition(" && ")
    assert sep and re.fullmatch(r"pip install (-e )?\.", install), f"not a plain install: {install}"
    assert run.startswith("fsql build") and "fsql get customer_spend --entity customer_id=42" in run
    project = copy_of_the_clone(tmp_path / "clone")
    assert not list((project / "data").glob("*.parquet"))  # the first build generates them
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    core_only_launcher(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", run], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines()
                if line.split() and line.split()[0] in ("spend_30d", "orders_30d")}
    assert statuses == {"spend_30d": "present", "orders_30d": "present"}, result.stdout


@pytest.mark.parametrize(
    ("section", "body"),
    [
        ("warehouse", 'engine = "postgres"\nurl = "postgresql://postgres@127.0.0.1:5432/test"\nschema = "fsql"'),
        ("registry", 'url = "postgresql://postgres@127.0.0.1:5432/test"'),
    ],
)
def test_a_missing_postgres_extra_is_one_line(tmp_path: Path, section: str, body: str) -> None:
    project = copy_of_the_clone(tmp_path / "clone")
    toml = project / "fsql.toml"
    text = toml.read_text()
    start = text.index(f"[{section}]")
    end = text.index("\n\n", start)
    toml.write_text(text[:start] + f"[{section}]\n{body}" + text[end:])
    core_only_launcher(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([str(tmp_path / "fsql"), "build", "-p", str(project)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == "PostgreSQL support needs extra packages; run pip install 'fsql[postgres]'\n"


# --- fresh, deterministic sample data ---------------------------------------------------------------


def timestamps(table: pa.Table) -> list[str]:
    return [name for name, dtype in zip(table.column_names, table.schema.types, strict=True)
            if pa.types.is_timestamp(dtype)]


def test_generated_data_ends_today_and_keeps_the_example_fresh(tmp_path: Path) -> None:
    scaffold(tmp_path / "new")
    today = datetime.now(UTC).replace(tzinfo=None)
    for name in ("orders", "customers", "fx_rates", "churn_labels"):
        table = pq.read_table(tmp_path / "new" / "data" / f"{name}.parquet")
        newest = max(pc.max(table[c]).as_py() for c in timestamps(table) if c != "loaded_at")
        assert today - timedelta(days=30) < newest <= today, (name, newest)
    orders = pq.read_table(tmp_path / "new" / "data" / "orders.parquet")
    # Customer 42 is the README's example: its latest order is known and inside the 30-day TTL today.
    mine = orders.filter(pc.and_(pc.equal(orders["customer_id"], 42), pc.less_equal(orders["loaded_at"], today)))
    assert today - pc.max(mine["order_ts"]).as_py() < timedelta(days=30)
    # churn.sql keeps its fixed date: labels after it exist for any anchor from SEED_ANCHOR on.
    labels = pq.read_table(tmp_path / "new" / "data" / "churn_labels.parquet")
    assert pc.sum(pc.greater_equal(labels["label_ts"], datetime(2026, 2, 1))).as_py() > 4000
    assert "TIMESTAMP '2026-02-01'" in (ROOT / "features" / "churn.sql").read_text()


def digest(tables: dict[str, pa.Table]) -> str:
    h = hashlib.sha256()
    for name in sorted(tables):
        for column in tables[name].column_names:
            h.update(f"{name}.{column}:{tables[name][column].type}".encode())
            h.update(repr(tables[name][column].to_pylist()).encode())
    return h.hexdigest()


def test_the_seed_anchor_reproduces_the_dataset_the_tests_were_written_against() -> None:
    """Tests build their example project at SEED_ANCHOR: the same values on every day and machine (the
    digest is of the dataset that used to be committed, rows from 2026-01-01 to 2026-11-27)."""
    tables = generate(anchor=SEED_ANCHOR)
    assert digest(tables) == "e57969ba2f99a0af840937a4d2644c2cbb2c883cdce762415f92d55042d15c98"
    assert pc.min(tables["fx_rates"]["rate_ts"]).as_py() == datetime(2026, 1, 1)
    assert pc.max(tables["fx_rates"]["rate_ts"]).as_py() == datetime(2026, 11, 27)


def test_another_anchor_moves_every_timestamp_and_nothing_else() -> None:
    shift = timedelta(days=400)
    base, moved = generate(anchor=SEED_ANCHOR), generate(anchor=SEED_ANCHOR + shift)
    again = generate(anchor=SEED_ANCHOR + shift)
    assert all(again[name].equals(table) for name, table in moved.items())  # deterministic for an anchor
    for name, table in base.items():
        other = moved[name]
        assert other.schema == table.schema and other.num_rows == table.num_rows
        for column in table.column_names:
            if column in timestamps(table):
                assert pc.all(pc.equal(pc.subtract(other[column], table[column]), pa.scalar(shift, pa.duration("us")))).as_py()
            else:
                assert other[column].equals(table[column]), (name, column)


def test_ensure_fresh_writes_only_missing_tables_of_a_marked_folder(tmp_path: Path) -> None:
    project = copy_of_the_clone(tmp_path / "clone")
    first = ensure_fresh(project, anchor=SEED_ANCHOR)
    assert {p.name for p in first} == {"orders.parquet", "customers.parquet", "fx_rates.parquet", "churn_labels.parquet"}
    assert ensure_fresh(project) == []  # nothing missing: nothing written, whatever the day
    orders = project / "data" / "orders.parquet"
    before = orders.read_bytes()
    (project / "data" / "fx_rates.parquet").unlink()
    assert ensure_fresh(project, anchor=SEED_ANCHOR + timedelta(days=1)) == [project / "data" / "fx_rates.parquet"]
    assert orders.read_bytes() == before  # existing files, the user's or older samples, are never rewritten
    assert not list((project / "data").glob("*.tmp"))
    # Without the marker (a user's own project) a missing file stays missing: build reports it.
    (project / MARKER).unlink()
    orders.unlink()
    assert ensure_fresh(project) == [] and not orders.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed = [", "data/sample.toml: invalid sample marker"),
        ("seed = 7\ntables = [\"order\"]", "data/sample.toml: unknown sample table 'order'; the sample has customers, "
         "orders, fx_rates, churn_labels; did you mean 'orders'?"),
        ("seed = 'x'", "data/sample.toml: the sample seed must be an integer, not 'x'; restore"),
    ],
)
def test_a_broken_sample_marker_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / MARKER).parent.mkdir()
    (tmp_path / MARKER).write_text(text)
    with pytest.raises(ConfigError) as caught:
        ensure_fresh(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path}/{message}") and "\n" not in str(caught.value)
    assert not list(tmp_path.rglob("*.parquet"))


def test_init_without_sample_writes_no_data_and_no_marker(tmp_path: Path) -> None:
    created = scaffold(tmp_path / "bare", with_data=False)
    assert not (tmp_path / "bare" / "data").exists()
    assert all(p.suffix in (".sql", ".onnx") or p.name == "fsql.toml" for p in created)
    assert ensure_fresh(tmp_path / "bare") == []


def test_the_repository_root_is_the_scaffold() -> None:
    """The root example project (fsql.toml, features/, the sample marker) is exactly what `fsql init`
    writes, and no Parquet file is committed at the root: the first build generates it."""
    template = sorted(p.relative_to(PROJECT_FILES) for p in PROJECT_FILES.rglob("*") if p.is_file())
    assert Path("fsql.toml") in template and MARKER in template
    for relative in template:
        assert filecmp.cmp(PROJECT_FILES / relative, ROOT / relative, shallow=False), relative
    root_files = {p.relative_to(ROOT) for p in [ROOT / "fsql.toml", *(ROOT / "features").rglob("*.sql"),
                                                 *(ROOT / "models").glob("*.onnx"), ROOT / MARKER]}
    assert root_files == set(template)
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/orders.parquet"], cwd=ROOT)
    assert ignored.returncode == 0, "data/*.parquet at the root must be ignored: it is generated"


def test_readme_shows_no_tool_that_pip_does_not_install() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)^```$", text, re.M | re.S)
    commands = [line.split()[0] for block in blocks for line in block.splitlines() if line.strip()]
    assert set(commands) <= {"pip", "python", "fsql"}, commands
    assert 'fsql query "SELECT' in text
