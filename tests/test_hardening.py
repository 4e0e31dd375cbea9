"""Faults found under attack (issue 9) at the service level: deletions and corrections reach the online
store on a full run, and a future --end cannot poison the watermark."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fsql.errors import RequestError
from tests.test_materialize import (
    COMBOS,
    T0,
    T1,
    T2,
    T3,
    Project,
    assert_no_skew,
    event,
    history,
    make_project,
)


@pytest.fixture(params=COMBOS)
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    p = make_project(request, tmp_path, request.param)
    yield p
    p.close()


def test_a_full_run_serves_deletions_and_lower_ranked_corrections(project: Project) -> None:
    ids = list(range(1, 11))
    rows = history(10)
    # customer 1's newest row has a huge value; customer 2 exists only to be deleted later
    rows.append(event(1, T0, T0 + timedelta(minutes=1), 999.0, note="big"))
    project.write(rows)
    service = project.service()
    project.build(service)
    service.materialize(end=T1)
    online = {r["customer_id"]: r for r in assert_no_skew(service, ids, T1)}
    assert online[1]["amount"] == 999.0 and online[2]["amount__status"] == "present"

    # upstream: customer 2 deleted; customer 1's row corrected in place to a value that ranks lower
    fixed = [r for r in rows if r["customer_id"] != 2]
    fixed = [{**r, "amount": 1.0} if r["amount"] == 999.0 else r for r in fixed]
    project.write(fixed)
    project.build(service)  # PostgreSQL copies file sources at build
    # an incremental run cannot see either change (no row became eligible since the watermark) ...
    service.materialize(end=T2)
    # ... a full run recomputes into a fresh generation and switches readers to it
    [run] = service.materialize(full=True, end=T3)
    assert run.outcome == "success"
    online = {r["customer_id"]: r for r in assert_no_skew(service, ids, T3)}
    assert online[1]["amount"] == 1.0
    assert online[2]["amount"] is None and online[2]["amount__status"] == "missing"


def test_a_future_end_is_refused_and_a_full_run_resets_the_watermark(project: Project) -> None:
    project.write(history(5))
    service = project.service()
    project.build(service)
    future = datetime.now(UTC) + timedelta(days=365)
    with pytest.raises(RequestError, match="in the future"):
        service.materialize(end=future)
    assert service.registry.watermark("spend", service.definitions()[0]["spend"].version) is None
    service.materialize(end=T2)
    # a watermark poisoned by an older fsql (a future end) is repaired by a full run
    view = service.definitions()[0]["spend"]
    run_id = service.registry.start_run("spend", view.version, None, future)
    service.registry.finish_run(run_id, rows=0, outcome="success", watermark=future)
    assert service.registry.watermark("spend", view.version) == future
    assert service.materialize(end=T3)[0].outcome == "skipped"
    [run] = service.materialize(full=True)
    assert run.outcome == "success"
    assert service.registry.watermark("spend", view.version) == run.end < future


def test_a_lost_postgres_connection_reports_the_original_error_on_one_line(pg_schema: str, tmp_path: Path) -> None:
    """Killing the backend inside a transaction: the rollback and the autocommit switch fail as well,
    and must not replace the error that says what happened."""
    import psycopg

    from fsql.engines.postgres import PostgresEngine
    from fsql.errors import EngineError
    from tests.conftest import POSTGRES_URL

    engine = PostgresEngine(POSTGRES_URL, pg_schema, tmp_path)
    pid = engine.arrow("SELECT pg_backend_pid() AS pid").column("pid")[0].as_py()
    try:
        with pytest.raises(EngineError) as failed, engine.transaction():
            engine.execute("SELECT 1")
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            engine.execute("SELECT 1")
        message = str(failed.value)
        assert "\n" not in message and message.startswith("PostgreSQL: ")
        assert "terminat" in message.lower() or "connection" in message.lower(), message
    finally:
        engine.close()
