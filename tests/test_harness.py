"""The test suite's own guarantees in CI (``CI=true``): hypothesis failures reproduce, and tests that
need a ``redis-server`` binary fail instead of silently skipping when it is missing.

Both are checked end to end by running pytest in a subprocess, as CI would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DRAWS = '''
import os

from hypothesis import given, settings, strategies as st

draws = []


@settings(max_examples=15)
@given(st.lists(st.integers(), max_size=5), st.text(max_size=5))
def draw(xs, s):
    draws.append(repr((xs, s)))


def test_draw_twice():
    with open(os.environ["DRAWS_OUT"], "w") as f:
        for _ in range(2):
            draws.clear()
            draw()
            f.write("\\t".join(draws) + "\\n")
'''


def pytest_run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def ci_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_PROFILE"}
    env.update(CI="true", PYTHONPATH=str(ROOT), **extra)
    return env


def test_ci_profile_draws_the_same_examples_every_run(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    local = ci_env()
    del local["CI"]
    runs = []
    (tests / "test_draws.py").write_text(DRAWS)
    for i, env in enumerate([ci_env(), ci_env(), local]):
        out = tmp_path / f"draws_{i}.txt"
        result = pytest_run(["tests/test_draws.py"], {**env, "DRAWS_OUT": str(out)}, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        runs.append(out.read_text().splitlines())
    # In CI: the same examples in every call and every process.
    assert len(runs[0][0].split("\t")) >= 10
    assert runs[0][0] == runs[0][1] == runs[1][0]
    # Without CI examples are random: the equality above is the profile's doing.
    assert runs[2][0] != runs[2][1]


def test_fault_tests_fail_in_ci_without_redis_server(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    selection = [str(ROOT / "tests" / "test_faults.py"), "-k", "redis_killed or redis_restart", "-rfs"]
    result = pytest_run([*selection, "-x"], ci_env(PATH=str(empty)), ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "redis-server is not on PATH; CI must install it" in output, output
    assert " skipped" not in output.splitlines()[-1], output
    # Outside CI the same run skips: a laptop without redis-server still runs the rest of the suite.
    env = ci_env(PATH=str(empty))
    del env["CI"]
    local = pytest_run(selection, env, ROOT)
    assert local.returncode == 0 and "4 skipped" in local.stdout.splitlines()[-1], local.stdout + local.stderr
