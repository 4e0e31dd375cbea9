"""The layout's promises, checked: dependencies point one way (import-linter contracts in
pyproject.toml), and the wheel ships every package and every migration script."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_use_case_importing_another_breaks_the_contract(tmp_path: Path) -> None:
    """The contract can fail: a copy of the package whose materialize imports build is refused."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "fsql", copy / "fsql", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    module = copy / "fsql" / "service" / "materialize.py"
    module.write_text(module.read_text().replace("from fsql.service.context import Context",
                                                 "from fsql.service.build import build\nfrom fsql.service.context import Context"))
    env_path = f"{copy}"
    result = subprocess.run([shutil.which("lint-imports") or "lint-imports"], cwd=copy, capture_output=True, text=True,
                            timeout=300, env={"PYTHONPATH": env_path, "PATH": str(Path(sys.executable).parent)})
    assert result.returncode != 0 and "Use cases never import each other BROKEN" in result.stdout, result.stdout[-2000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (built,) = out.glob("fsql-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_ships_every_package_and_migration(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "fsql").rglob("*.py")
                if "__pycache__" not in p.parts and "sample/project" not in p.as_posix()}
    for package in sorted(packages):
        modules = {p.name for p in (ROOT / package).glob("*.py")}
        shipped = {Path(n).name for n in names if Path(n).parent.as_posix() == package}
        assert modules <= shipped, f"{package}: missing from the wheel: {sorted(modules - shipped)}"
    scripts = {p.relative_to(ROOT / "migrations").as_posix() for p in (ROOT / "migrations").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {"env.py", "script.py.mako"} <= scripts and any(s.startswith("versions/") for s in scripts)
    for script in scripts:
        assert f"fsql/migrations/{script}" in names, f"migration {script} missing from the wheel"
    sample = {p.relative_to(ROOT / "fsql").as_posix() for p in (ROOT / "fsql" / "sample" / "project").rglob("*")
              if p.is_file()}
    assert {f"fsql/{s}" for s in sample} <= names
