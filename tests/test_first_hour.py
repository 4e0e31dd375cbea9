"""The newcomer's first hour (issue 8): each rough edge a new user met, as a test that failed before."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import fsql
from fsql.cli import app
from tests.projects import example_project, registry_dump

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_project(tmp_path / "proj", tmp_path_factory.getbasetemp())


def cli(project: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "-p", str(project)])
    return result.exit_code, result.stdout, result.stderr


def edit(project: Path, name: str, old: str, new: str) -> None:
    path = project / "features" / name
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_metadata_only_edits_are_a_compatible_change_that_build_registers(project: Path) -> None:
    assert cli(project, "build")[0] == 0
    edit(project, "customer_spend.sql", "-- @owner growth-team", "-- @owner pricing-team")
    edit(project, "customer_spend.sql", "-- @tags orders, finance", "-- @tags orders, finance, revenue")
    edit(project, "customer_spend.sql", "-- total spend over", "-- summed spend over")
    code, out, _ = cli(project, "plan", "--json")
    assert code == 0
    change = next(c for c in json.loads(out) if c["name"] == "customer_spend")
    assert change["action"] == "updated" and not change["breaking"]
    assert {"owner changed", "tags changed"} <= set(change["reasons"])
    assert any(r.startswith("column descriptions changed: spend_30d") for r in change["reasons"])
    code, out, _ = cli(project, "build")
    assert code == 0 and "updated" in out
    described = json.loads(cli(project, "describe", "customer_spend", "--json")[1])
    assert described["owner"] == "pricing-team" and "revenue" in described["tags"]
    assert next(f for f in described["features"] if f["name"] == "spend_30d")["description"].startswith("summed")
    assert cli(project, "plan")[1].startswith("no changes")


def test_get_before_materialize_says_not_materialized_with_a_hint(project: Path) -> None:
    assert cli(project, "build")[0] == 0
    code, out, err = cli(project, "get", "customer_spend", "--entity", "customer_id=42")
    assert code == 0
    assert "spend_30d" in out and "not_materialized" in out and "None" not in out
    assert "run `fsql materialize`" in err


def test_online_results_keep_registry_types_when_nothing_is_present(project: Path) -> None:
    with fsql.Store(project) as store:
        store.build()
        frame = store.online(["customer_spend.spend_30d", "customer_spend.orders_30d"], {"customer_id": [42, 7]})
    assert frame.schema["spend_30d"] == pl.Float64 and frame.schema["orders_30d"] == pl.Int64
    assert frame.schema["customer_id"] == pl.Int64
    assert frame["spend_30d__status"].to_list() == ["not_materialized"] * 2


def test_plan_sees_an_emptied_warehouse_and_build_restores_it(project: Path) -> None:
    assert cli(project, "build")[0] == 0
    (project / ".fsql" / "warehouse.duckdb").unlink()
    code, out, _ = cli(project, "plan")
    assert code == 0 and "missing from the warehouse" in out and not out.startswith("no changes")
    code, out, _ = cli(project, "build")
    assert code == 0 and "nothing to do" not in out
    code, out, _ = cli(project, "query", "SELECT COUNT(*) AS n FROM customer_spend__latest", "--json")
    assert code == 0 and json.loads(out)[0]["n"] > 0


def test_plan_binds_columns_so_a_missing_column_is_reported_by_plan(project: Path) -> None:
    assert cli(project, "build")[0] == 0
    before = registry_dump(project)
    edit(project, "customer_spend.sql", "SUM(amount) OVER w", "SUM(amt) OVER w")
    code, _, err = cli(project, "plan")
    assert code == 1
    assert err.startswith("features/customer_spend.sql:") and "amt" in err
    assert registry_dump(project) == before


def test_entity_key_types_must_agree_across_views(project: Path) -> None:
    assert cli(project, "build")[0] == 0
    edit(project, "customer_profile.sql", "    customer_id,", "    CAST(customer_id AS VARCHAR) AS customer_id,")
    before = registry_dump(project)
    code, _, err = cli(project, "build", "--allow-breaking")
    assert code == 1
    # whichever file comes first decides; the error names both files and both types
    assert "entity key 'customer_id' of entity 'customer' has type" in err
    assert "VARCHAR" in err and "BIGINT" in err and "features/customer_profile.sql" in err
    assert err.split(":")[0].startswith("features/customer_") and "CAST(customer_id AS" in err
    assert registry_dump(project) == before


def test_hints_name_the_cli_and_suggest_close_names(project: Path) -> None:
    assert cli(project, "build")[0] == 0
    code, _, err = cli(project, "get", "customer_spnd", "--entity", "customer_id=42")
    assert code == 1 and "did you mean 'customer_spend'?" in err
    code, _, err = cli(project, "get", "customer_merchant_stats", "--entity", "customer_id=42")
    assert code == 1 and "merchant_id" in err and "entities={" not in err
    code, _, err = cli(project, "get", "customer_spend", "--entity", "customer_id")
    assert code == 1 and "--entity customer_id=42" in err
    # the Jinja hint's --var exists
    toml = project / "fsql.toml"
    toml.write_text(toml.read_text().replace("spend_window_days = 30", ""))
    code, _, err = cli(project, "build")
    assert code == 1 and "--var spend_window_days=" in err
    assert cli(project, "build", "--var", "spend_window_days=30")[0] == 0


def test_output_format_follows_the_suffix_and_unknown_suffixes_are_refused(project: Path, tmp_path: Path) -> None:
    assert cli(project, "build")[0] == 0
    out = tmp_path / "t5.jsonl"
    code, _, err = cli(project, "training-set", "churn", "-o", str(out))
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and {"customer_id", "label_ts", "churned", "spend_30d"} <= set(rows[0])
    code, _, err = cli(project, "training-set", "churn", "-o", str(tmp_path / "t5.xlsx"))
    assert code == 1 and "unknown file type '.xlsx'" in err and not (tmp_path / "t5.xlsx").exists()


def test_what_users_see_reads_well(project: Path) -> None:
    code, out, _ = cli(project, "build")
    assert code == 0 and "1 training set (" in out and "1 training sets" not in out
    code, out, _ = cli(project, "describe", "customer_spend")
    assert "ttl: 30d" in out and "2592000" not in out
    code, out, _ = cli(project, "describe", "churn")
    assert "spine_columns: customer_id, label_ts, churned" in out and "{'name'" not in out
    assert cli(project, "materialize")[0] == 0
    code, out, _ = cli(project, "get", "customer_spend", "--entity", "customer_id=42", "--entity", "customer_id=999999",
                       "--json")
    rows = json.loads(out)
    assert rows[0]["customer_id"] == 42 and isinstance(rows[0]["customer_id"], int)
    assert rows[1]["spend_30d"] is None and rows[1]["spend_30d__status"] == "missing"
    code, out, _ = cli(project, "get", "customer_spend", "--entity", "customer_id=999999")
    assert "None" not in out and "null" in out
    hits = json.loads(cli(project, "search", "average order", "--json")[1])
    names = [h["name"] for h in hits]
    assert len(names) == len(set(names))
    help_text = runner.invoke(app, ["compile", "--help"]).stdout
    assert "<bool>" not in help_text and "bigquery" in help_text and "snowflake" in help_text


def test_a_notebook_store_and_a_terminal_work_side_by_side(project: Path) -> None:
    assert cli(project, "build")[0] == 0
    notebook = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, fsql
            store = fsql.Store({str(project)!r})
            print(store.query("SELECT COUNT(*) AS n FROM customer_spend").item(), flush=True)
            sys.stdin.readline()
            print(store.query("SELECT COUNT(*) AS n FROM customer_spend__latest").item(), flush=True)
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert notebook.stdout is not None and notebook.stdin is not None
        assert int(notebook.stdout.readline()) > 0  # the notebook has used its Store and keeps it open
        code, _, err = cli(project, "materialize")
        assert code == 0, err
        edit(project, "customer_spend.sql", "-- @owner growth-team", "-- @owner another-team")
        code, _, err = cli(project, "build")
        assert code == 0, err
        notebook.stdin.write("\n")
        notebook.stdin.flush()
        assert int(notebook.stdout.readline()) > 0
        assert notebook.wait(timeout=60) == 0
    finally:
        notebook.kill()
