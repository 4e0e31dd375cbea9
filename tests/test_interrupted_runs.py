"""A materialization run never stays 'running' after its process is gone (issue 9, item 8).

An exception or a SIGTERM fails the run at once, with a one-line reason; a run whose process was
killed (SIGKILL, a crash) is failed by the next command that materializes or lists runs, on the same
host. Runs of other hosts and of live processes are left as they are.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

import fsql.service.materialize as materialize_service
from fsql import Store
from fsql.cli import app
from fsql.registry import Registry
from fsql.registry.registry import this_host
from tests.test_relocation import END, make_project

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# Materializes the project given as argv[1], stalling at the first batch after touching argv[2], so
# the test can kill it in the middle of a run.
_STALLING_RUN = """
import sys, time
from pathlib import Path
import fsql.service.materialize as m

def stall(*args, **kwargs):
    Path(sys.argv[2]).touch()
    time.sleep(120)

m._online_batch = stall
from fsql.cli import app
app(["materialize", "spend", "--end", sys.argv[3], "--project", sys.argv[1]], prog_name="fsql")
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = make_project(tmp_path / "project")
    with Store(root) as store:
        store.build()
    yield root


def registry(root: Path) -> Registry:
    return Registry.open("sqlite:///.fsql/registry.db", base_dir=root)


def stalled_run(root: Path, tmp_path: Path) -> subprocess.Popen[str]:
    """A `fsql materialize spend` in another process, stopped inside its run."""
    flag = tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _STALLING_RUN, str(root), str(flag), END.isoformat()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 90
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the run never reached its first batch: {out} {err}")
        time.sleep(0.05)
    return proc


def test_a_killed_run_is_failed_by_the_next_command_and_the_next_run_converges(project: Path, tmp_path: Path) -> None:
    proc = stalled_run(project, tmp_path)
    with registry(project) as reg:
        [run] = reg.runs("spend")
        assert (run.outcome, run.pid, run.host) == ("running", proc.pid, this_host())
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    with registry(project) as reg:
        assert reg.runs("spend")[0].outcome == "running"  # nobody has looked yet

    listed = runner.invoke(app, ["runs", "spend", "--project", str(project)])
    assert listed.exit_code == 0, listed.output
    reason = f"interrupted: process {proc.pid} on {this_host()} is gone"
    assert "failed" in listed.stdout and reason in listed.stdout
    with registry(project) as reg:
        [run] = reg.runs("spend")
        assert run.outcome == "failed" and run.error == reason and run.finished_at is not None
        assert reg.watermark("spend", run.version) is None  # the killed run moved nothing

    done = runner.invoke(app, ["materialize", "--end", END.isoformat(), "--project", str(project)])
    assert done.exit_code == 0, done.output
    with Store(project) as store:
        assert [r.outcome for r in store.runs("spend")] == ["success", "failed"]
        rows = store.online_dicts(["spend.amount", "bonus.bonus"], {"customer_id": [1, 2]}, now=END)
        assert [(r["amount"], r["bonus"]) for r in rows] == [(1.0, 10.0), (2.0, 20.0)]


def test_a_terminated_run_is_failed_at_once(project: Path, tmp_path: Path) -> None:
    proc = stalled_run(project, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    with registry(project) as reg:  # read without the sweep: the run failed itself
        [run] = reg.runs("spend")
        assert run.outcome == "failed"
        assert run.error == "interrupted: the process was asked to exit"


@pytest.mark.parametrize(("error", "reason"), [
    (RuntimeError("disk on fire\nTraceback-like second line"), "RuntimeError: disk on fire"),
    (KeyboardInterrupt(), "interrupted (Ctrl-C)"),
])
def test_an_unexpected_exception_fails_the_run_at_once_with_one_line(
    project: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, reason: str
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(materialize_service, "_online_batch", explode)
    with Store(project) as store:
        with pytest.raises(type(error)):
            store.materialize(["spend"], end=END)
        with registry(project) as reg:
            [run] = reg.runs("spend")
        assert (run.outcome, run.error) == ("failed", reason)
        monkeypatch.undo()
        assert [r.outcome for r in store.materialize(["spend"], end=END)] == ["success"]


def _pretend(reg: Registry, run_id: int, **values: object) -> None:
    runs = sa.table("materialization_runs", sa.column("id"), sa.column("pid"), sa.column("host"),
                    sa.column("started_at"))
    with reg._engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == run_id).values(**values))


def test_only_runs_whose_process_on_this_host_is_gone_are_failed(project: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    with Store(project) as store, registry(project) as reg:
        version = store.definition("spend").version
        ids = {label: reg.start_run("spend", version, None, END)
               for label in ("live", "other_host", "dead", "reused_pid", "unknown")}
        started = reg.runs("spend")[0].started_at
        _pretend(reg, ids["other_host"], host="elsewhere.example", pid=dead.pid)
        _pretend(reg, ids["dead"], pid=dead.pid)
        # this test's own pid, but the run started before this process did: another process held it
        _pretend(reg, ids["reused_pid"], started_at=(started - timedelta(days=3)).replace(tzinfo=None))
        _pretend(reg, ids["unknown"], pid=None, host=None)  # written before runs had owners
        failed = reg.fail_interrupted_runs()
        assert sorted(r.id for r in failed) == sorted([ids["dead"], ids["reused_pid"]])
        outcomes = {r.id: r.outcome for r in reg.runs("spend")}
        assert outcomes == {ids["live"]: "running", ids["other_host"]: "running", ids["dead"]: "failed",
                            ids["reused_pid"]: "failed", ids["unknown"]: "running"}
        assert reg.fail_interrupted_runs() == []  # a second sweep finds nothing more
        reg.finish_run(ids["live"], rows=0, outcome="success")  # the live run can still finish
