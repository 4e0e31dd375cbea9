"""A built, materialized example project with a hostile view and a model, and the catalog served on a
private loopback port, shared by the catalog tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from fsql.server.catalog import catalog_app
from fsql.store import Store
from tests.projects import example_project

HOSTILE = "<script>window.__pwned = 1</script> & <b>bold</b>"


def catalog_project(target: Path, cache: Path) -> Path:
    project = example_project(target, cache)
    (project / "features" / "hostile.sql").write_text(
        "-- @feature_view hostile_view\n-- @entity customer\n-- @timestamp event_ts\n-- @owner red-team\n"
        f"-- {HOSTILE}\n"
        "SELECT customer_id, order_ts AS event_ts,\n"
        f"    amount AS raw_amount   -- {HOSTILE}\n"
        "FROM orders\n"
    )
    # a module name of its own: the project's models/ folder (the example's ONNX file) shadows "models"
    (project / "churn_rules.py").write_text(
        "def predict(features):\n"
        "    return [1.0 if (s or 0) > 500 else 0.0 for s in features['spend_30d']]\n"
    )
    with (project / "fsql.toml").open("a") as f:
        f.write('\n[models.churn_model]\ntraining_set = "churn"\nkind = "python"\nentry_point = "churn_rules:predict"\n')
    with Store(project) as store:
        store.build()
        spend = project / "features" / "customer_spend.sql"
        spend.write_text(spend.read_text().replace("SUM(amount) OVER w", "SUM(AMOUNT) OVER w"))  # a 2nd revision
        store.build()
        store.materialize()
        store.compute_stats("customer_spend")
    return project


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(project: Path) -> Iterator[str]:
    """The catalog on 127.0.0.1 in a thread; yields its base URL and stops exactly that server."""
    store = Store(project)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(catalog_app(store), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the catalog server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
