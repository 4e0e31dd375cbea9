"""An independent reference for the example project, in plain DuckDB SQL over the raw Parquet files.

It shares no code with fsql: each view's rows are written out by hand from its feature file (the
ASOF join as a range join + ROW_NUMBER), and the latest row per entity and the point-in-time join
apply the README's rules directly: ``event_ts <= t``, ``event_ts >= t - ttl``, ``created <= t OR
created IS NULL``, then the tie order (event_ts, created with NULL lowest, each feature value in
declared order with NULL lowest; DuckDB orders NaN above every number and strings by bytes).

Naive timestamps are UTC: "now" is ``CURRENT_TIMESTAMP`` as a naive UTC time, so the reference
means the same in any session time zone. Identifiers below are constants of this module.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

NOW_UTC = "CAST(timezone('UTC', CURRENT_TIMESTAMP) AS TIMESTAMP)"
SOURCES = ("orders", "customers", "fx_rates", "churn_labels")


@dataclass(frozen=True)
class View:
    name: str
    keys: tuple[str, ...]
    timestamp: str
    created: str | None
    ttl_hours: int | None
    features: tuple[str, ...]
    rows: str  # the view's rows, over the ref_* relations


def _window(partition: str, days: int) -> str:
    return f"(PARTITION BY {partition} ORDER BY order_ts RANGE BETWEEN INTERVAL {days} DAYS PRECEDING AND CURRENT ROW)"


# Every generated view ends with __known_at, when the whole input of a row was known: here the latest
# load time (or event time, for rows without one) over the window's frame.
KNOWN = "__known_at"

SPEND_ROWS = f"""
    SELECT customer_id, order_ts AS event_ts, loaded_at,
           SUM(amount) OVER {_window('customer_id', 30)} AS spend_30d,
           COUNT(*) OVER {_window('customer_id', 30)} AS orders_30d,
           MAX(COALESCE(loaded_at, order_ts)) OVER {_window('customer_id', 30)} AS __known_at
    FROM ref_orders"""

VIEWS = {
    v.name: v
    for v in (
        View("customer_spend", ("customer_id",), "event_ts", "loaded_at", 720, ("spend_30d", "orders_30d"), SPEND_ROWS),
        View("customer_value", ("customer_id",), "event_ts", "loaded_at", 720, ("avg_order_value_30d", "high_spender"),
             f"""SELECT customer_id, event_ts, loaded_at, spend_30d / orders_30d AS avg_order_value_30d,
                        spend_30d >= 500 AS high_spender, __known_at
                 FROM ({SPEND_ROWS})"""),
        View("customer_merchant_stats", ("customer_id", "merchant_id"), "event_ts", None, 90 * 24,
             ("merchant_orders_90d", "merchant_avg_amount_90d"),
             f"""SELECT customer_id, merchant_id, order_ts AS event_ts,
                        COUNT(*) OVER {_window('customer_id, merchant_id', 90)} AS merchant_orders_90d,
                        AVG(amount) OVER {_window('customer_id, merchant_id', 90)} AS merchant_avg_amount_90d,
                        MAX(order_ts) OVER {_window('customer_id, merchant_id', 90)} AS __known_at
                 FROM ref_orders"""),
        View("customer_profile", ("customer_id",), "updated_at", None, None, ("country", "segment", "age"),
             "SELECT customer_id, updated_at, country, segment, age, updated_at AS __known_at FROM ref_customers"),
        View("order_amount_usd", ("customer_id",), "event_ts", None, 720, ("amount_usd", "currency"),
             """SELECT o.customer_id, o.order_ts AS event_ts, o.amount * r.rate_to_usd AS amount_usd, o.currency,
                       o.order_ts AS __known_at
                FROM ref_orders AS o
                LEFT JOIN ref_fx_rates AS r ON o.currency = r.currency AND r.rate_ts <= o.order_ts
                QUALIFY ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY r.rate_ts DESC NULLS LAST) = 1"""),
    )
}


def connect(project: Path, warehouse: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory session in UTC with the raw sources as ``ref_<source>`` and, if asked, the
    project's DuckDB warehouse attached read-only as ``wh``."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # The views read source paths under the project folder this variable names (as fsql sets it).
    con.execute("SET VARIABLE fsql_root = ?", [str(project)])
    for source in SOURCES:
        con.read_parquet(str(project / "data" / f"{source}.parquet")).create_view(f"ref_{source}")
    if warehouse:
        con.execute("ATTACH ? AS wh (READ_ONLY)", [str(project / ".fsql" / "warehouse.duckdb")])
    return con


def tie_order(view: View, alias: str) -> str:
    order = [f"{alias}.{view.timestamp} DESC", f"{alias}.{KNOWN} DESC NULLS LAST"]
    order += [f"{alias}.{f} DESC NULLS LAST" for f in view.features]
    return ", ".join(order)


def candidate(view: View, alias: str, t: str) -> str:
    cond = [f"{alias}.{view.timestamp} <= {t}"]
    if view.ttl_hours is not None:
        cond.append(f"{alias}.{view.timestamp} >= {t} - INTERVAL {view.ttl_hours} HOURS")
    if view.created is not None:  # rule 3 on the derived known time (event-time mode passes created=None)
        cond.append(f"{alias}.{KNOWN} <= {t}")
    return " AND ".join(cond)


def latest_sql(view: View, t: str = NOW_UTC) -> str:
    """The latest row per entity as of ``t`` (a naive UTC timestamp expression), like ``__latest``."""
    columns = [*view.keys, view.timestamp, KNOWN, *view.features]
    keys_set = " AND ".join(f"h.{k} IS NOT NULL" for k in view.keys)
    return f"""
        SELECT {', '.join(f'h.{c}' for c in columns)}
        FROM ({view.rows}) AS h
        WHERE {keys_set} AND {candidate(view, 'h', t)}
        QUALIFY ROW_NUMBER() OVER (PARTITION BY {', '.join(f'h.{k}' for k in view.keys)}
                                   ORDER BY {tie_order(view, 'h')}) = 1"""


def pit_sql(spine: str, spine_columns: list[str], timestamp: str, features: list[tuple[str, str, str]],
            mode: str = "known-at") -> str:
    """The point-in-time join of ``spine`` (a query) with (view, feature, output name) triples."""
    by_view: dict[str, list[tuple[str, str]]] = {}
    for view, feature, out in features:
        by_view.setdefault(view, []).append((feature, out))
    ctes = [f"s AS (SELECT *, ROW_NUMBER() OVER () AS ref_row FROM ({spine}))"]
    joins, outputs = [], []
    for i, (name, wanted) in enumerate(by_view.items()):
        view = VIEWS[name]
        if mode == "event-time":
            view = View(view.name, view.keys, view.timestamp, None, view.ttl_hours, view.features, view.rows)
        # the created column still breaks ties in event-time mode (rule 3)
        order = tie_order(VIEWS[name], "h")
        on = " AND ".join([*(f"h.{k} = s.{k}" for k in view.keys), candidate(view, "h", f"s.{timestamp}")])
        ctes.append(f"""f{i} AS (
            SELECT s.ref_row, {', '.join(f'h.{f} AS {out}' for f, out in wanted)}
            FROM s LEFT JOIN ({view.rows}) AS h ON {on}
            QUALIFY ROW_NUMBER() OVER (PARTITION BY s.ref_row ORDER BY {order}) = 1)""")
        joins.append(f"JOIN f{i} USING (ref_row)")
        outputs += [f"f{i}.{out}" for _, out in wanted]
    return (f"WITH {', '.join(ctes)} SELECT {', '.join(f's.{c}' for c in spine_columns)}, {', '.join(outputs)} "
            f"FROM s {' '.join(joins)} ORDER BY s.ref_row")


def _norm(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ("NaN",)
    return value


def normalized(rows: list[tuple]) -> list[tuple]:
    """Rows that compare equal when their values are exactly equal, NaN included."""
    return [tuple(map(_norm, r)) for r in rows]


def multiset_diff(expected: list[tuple], actual: list[tuple]) -> str | None:
    """None when both hold the same rows (exact values, NaN equal to NaN), else a short report."""
    want, got = Counter(normalized(expected)), Counter(normalized(actual))
    if want == got:
        return None
    missing, extra = list((want - got).elements()), list((got - want).elements())
    return (f"{len(expected)} expected rows, {len(actual)} actual; {len(missing)} missing, e.g. "
            f"{sorted(missing, key=repr)[:3]}; {len(extra)} unexpected, e.g. {sorted(extra, key=repr)[:3]}")


def add_edge_rows(project: Path, now: datetime) -> None:
    """Append rows around ``now`` to the project's sample data, so the latest-row rules are exercised
    whatever day the sample data ends: exact ties that created or the values break (strings in byte
    order, NULL lowest), rows not yet known, future events, NULL keys and event times."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    day, hour = timedelta(days=1), timedelta(hours=1)
    now = now.replace(tzinfo=None, microsecond=0)
    orders = pq.read_table(project / "data" / "orders.parquet")
    next_id = max(orders.column("order_id").to_pylist()) + 1
    extra = [
        # (customer, merchant, order_ts, loaded_at, amount, currency)
        (1, 1, now - 2 * day, now - 2 * day + hour, 10.0, "USD"),
        (1, 1, now - 2 * day, now - day, 11.0, "USD"),  # same event, known later: wins on created
        (2, 2, now - 3 * day, None, 12.0, "EUR"),
        (2, 2, now - 3 * day, now - 3 * day, 12.0, "EUR"),  # a NULL created ranks lowest
        (3, 3, now - 5 * day, now - 5 * day, 13.0, "GBP"),
        (3, 3, now - day, now + day, 14.0, "GBP"),  # not known yet
        (4, 4, now - 6 * day, now - 6 * day, 15.0, "USD"),
        (4, 4, now + 2 * hour, now + 2 * hour, 16.0, "USD"),  # a future event
        (6, 5, now - 3 * day, now - 3 * day, 20.0, "EUR"),
        (6, 5, now - 3 * day, now - 3 * day, 30.0, "USD"),  # a tie only the values break
        (7, 1, now - 4 * day, now - 4 * day, 5.0, "USD"),
        (7, 1, now - 4 * day, now - 4 * day, 5.0, "USD"),  # an exact duplicate
        (None, 1, now - day, now - day, 99.0, "USD"),  # a NULL key never matches
        (8, 1, None, now - day, 98.0, "USD"),  # a NULL event time never qualifies
    ]
    columns = list(zip(*extra, strict=True))
    orders = pa.concat_tables([orders, pa.table({
        "order_id": pa.array(range(next_id, next_id + len(extra)), pa.int64()),
        "customer_id": pa.array(columns[0], pa.int64()),
        "merchant_id": pa.array(columns[1], pa.int64()),
        "order_ts": pa.array(columns[2], pa.timestamp("us")),
        "loaded_at": pa.array(columns[3], pa.timestamp("us")),
        "amount": pa.array(columns[4], pa.float64()),
        "currency": pa.array(columns[5], pa.string()),
    }).cast(orders.schema)])
    pq.write_table(orders, project / "data" / "orders.parquet")

    customers = pq.read_table(project / "data" / "customers.parquet")
    profiles = [
        # (customer, updated_at, country, segment, age): ties broken by country, segment, age
        (1, now - day, "DE", "smb", 40), (1, now - day, "de", "smb", 40),
        (2, now - day, None, "smb", 40), (2, now - day, "NL", "smb", 40),
        (3, now - day, "Z", "smb", 40), (3, now - day, "Ö", "smb", 40),
        (4, now - 2 * day, "FR", "smb", 41), (4, now + day, "GB", "smb", 41),
        (5, now - day, "US", "consumer", 50), (5, now - day, "US", "smb", 50),
        (6, now - day, "US", "smb", None), (6, now - day, "US", "smb", 30),
    ]
    columns = list(zip(*profiles, strict=True))
    customers = pa.concat_tables([customers, pa.table({
        "customer_id": pa.array(columns[0], pa.int64()),
        "updated_at": pa.array(columns[1], pa.timestamp("us")),
        "country": pa.array(columns[2], pa.string()),
        "segment": pa.array(columns[3], pa.string()),
        "age": pa.array(columns[4], pa.int32()),
    }).cast(customers.schema)])
    pq.write_table(customers, project / "data" / "customers.parquet")

    labels = pq.read_table(project / "data" / "churn_labels.parquet")
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 1]
    labels = pa.concat_tables([labels, pa.table({
        "customer_id": pa.array(ids, pa.int64()),
        "label_ts": pa.array([now - hour] * len(ids), pa.timestamp("us")),
        "churned": pa.array([False] * len(ids), pa.bool_()),
    }).cast(labels.schema)])
    pq.write_table(labels, project / "data" / "churn_labels.parquet")


def data_time(project: Path) -> datetime:
    """A fixed instant inside the sample data for reads pinned with ``now=`` / ``end=``: the latest
    order time not after the wall clock (UTC, aware). Customers who ordered in the 30 days before it
    have fresh values then, whatever day the sample data was generated."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        (latest,) = con.execute(
            f"SELECT max(order_ts) FROM read_parquet(?) WHERE order_ts <= {NOW_UTC}",
            [str(project / "data" / "orders.parquet")],
        ).fetchone()
    finally:
        con.close()
    return latest.replace(tzinfo=UTC)
