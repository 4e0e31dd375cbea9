"""Answers do not depend on the process time zone: naive timestamps are UTC and sessions run in UTC.

The whole suite can also run under another zone (``TZ=America/New_York python -m pytest -q``); this
file checks the contract in every run by starting a process under a zone west and one east of UTC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import POSTGRES_URL
from tests.service_adapter import Service

ROOT = Path(__file__).resolve().parent.parent
T = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)

CONFIG = """
[project]
name = "tz"
dialect = "duckdb"

[warehouse]
engine = "duckdb"
path = ".fsql/warehouse.duckdb"
schema = "fsql"

[entities.thing]
keys = ["k"]

[sources.events]
path = "events.parquet"
"""

NAIVE = """\
-- @feature_view naive
-- @entity thing
-- @timestamp event_ts
-- @created created
-- @ttl 1h
SELECT k, event_ts, created, x FROM events
"""

CAST = """\
-- @feature_view cast
-- @entity thing
-- @timestamp event_ts
-- @ttl 1h
-- Aware instants cast to naive timestamps: the cast reads the session's time zone.
SELECT k, CAST(aware_ts AS TIMESTAMP) AS event_ts, x AS y FROM events
"""

# (k, event, created, x), UTC wall times on T's day
ROWS = [
    (1, "10:00", "10:05", 1.0),
    (1, "11:30", "11:30", 2.0),
    (2, "11:10", "11:10", 4.0),
    (2, "11:59", "12:30", 3.0),  # not known at T (naive), but the cast view has no created column
    (3, "10:30", "10:30", 5.0),  # older than the 1h TTL at T
]
EXPECTED = {
    "x": [2.0, 4.0, None],
    "x__status": ["present", "present", "stale"],
    "y": [2.0, 3.0, None],
    "y__status": ["present", "present", "stale"],
}

WORKER = """
import json, sys, time
from datetime import datetime
import pyarrow as pa
from tests.service_adapter import Service

assert time.localtime(0).tm_gmtoff != 0, "the process time zone did not take effect"
root, t = sys.argv[1], datetime.fromisoformat(sys.argv[2])
service = Service.open(root)
service.build()
spine = pa.table({"k": pa.array([1, 2, 3], pa.int64()), "ts": pa.array([t] * 3, pa.timestamp("us", tz="UTC"))})
offline = service.training_set(features=["naive.x", "cast.y"], spine=spine, timestamp="ts").to_pydict()
assert [r.outcome for r in service.materialize(end=t)] == ["success", "success"]
online = service.online(["naive.x", "cast.y"], {"k": [1, 2, 3]}, now=t).to_dict(as_series=False)
print(json.dumps({"offline": {c: offline[c] for c in ("x", "y")}, "online": {c: online[c] for c in online if c != "k"}}))
service.close()
"""


def at(clock: str) -> datetime:
    hours, minutes = map(int, clock.split(":"))
    return T.replace(hour=hours, minute=minutes)


def write_project(root: Path) -> Path:
    (root / "features").mkdir(parents=True)
    (root / "fsql.toml").write_text(CONFIG)
    (root / "features" / "naive.sql").write_text(NAIVE)
    (root / "features" / "cast.sql").write_text(CAST)
    naive = pa.timestamp("us")
    pq.write_table(pa.table({
        "k": pa.array([r[0] for r in ROWS], pa.int64()),
        "event_ts": pa.array([at(r[1]).replace(tzinfo=None) for r in ROWS], naive),
        "created": pa.array([at(r[2]).replace(tzinfo=None) for r in ROWS], naive),
        "aware_ts": pa.array([at(r[1]) for r in ROWS], pa.timestamp("us", tz="UTC")),
        "x": pa.array([r[3] for r in ROWS], pa.float64()),
    }), root / "events.parquet")
    return root


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_training_sets_and_online_reads_ignore_the_process_time_zone(tmp_path: Path, zone: str) -> None:
    root = write_project(tmp_path / "project")
    env = {**os.environ, "TZ": zone, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", WORKER, str(root), T.isoformat()], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["offline"] == {"x": EXPECTED["x"], "y": EXPECTED["y"]}
    assert out["online"] == {"x": EXPECTED["x"], "x__status": EXPECTED["x__status"],
                             "y": EXPECTED["y"], "y__status": EXPECTED["y__status"]}


def _latest_project(root: Path) -> Path:
    """A view whose newest row happened two hours ago (naive UTC): five hours west of UTC, a naive
    time read as local time lies in the future."""
    write_project(root)
    now = datetime.now(UTC).replace(microsecond=0)
    pq.write_table(pa.table({
        "k": pa.array([1, 1], pa.int64()),
        "event_ts": pa.array([(now - timedelta(hours=h)).replace(tzinfo=None) for h in (2, 30)], pa.timestamp("us")),
        "created": pa.array([None, None], pa.timestamp("us")),
        "aware_ts": pa.array([now - timedelta(hours=h) for h in (2, 30)], pa.timestamp("us", tz="UTC")),
        "x": pa.array([2.0, 30.0], pa.float64()),
    }), root / "events.parquet")
    (root / "features" / "naive.sql").write_text(NAIVE.replace("-- @ttl 1h\n", ""))
    (root / "features" / "cast.sql").unlink()
    return root


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_latest_views_read_the_same_in_any_session_time_zone(tmp_path: Path, engine: str,
                                                             request: pytest.FixtureRequest) -> None:
    root = _latest_project(tmp_path / "project")
    overrides = {}
    if engine == "postgres":
        schema = request.getfixturevalue("pg_schema")
        overrides = {"warehouse": {"engine": "postgres", "url": POSTGRES_URL, "schema": schema}}
    service = Service.open(root, overrides)
    service.build()
    assert service.query("SELECT x FROM naive__latest").to_pylist() == [{"x": 2.0}]  # fsql's own UTC session
    service.close()
    if engine == "duckdb":
        con = duckdb.connect(str(root / ".fsql" / "warehouse.duckdb"), read_only=True)
        con.execute("SET TimeZone = 'America/New_York'")
        con.execute("SET VARIABLE fsql_root = ?", [str(root)])  # the folder the views read sources under
        rows = con.execute("SELECT x FROM fsql.naive__latest").fetchall()
        con.close()
    else:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
            con.execute("SET TIME ZONE 'America/New_York'")
            rows = con.execute(f'SELECT x FROM "{schema}".naive__latest').fetchall()
    assert rows == [(2.0,)]
