"""Deterministic benchmark data: customers, their order events, and a labelled spine.

API (everything returns pyarrow Tables; same arguments → byte-identical data)::

    from bench.data import generate, deep_history, latest_per_entity, FEATURES

    data = generate(scale=1.0, seed=42)      # Dataset(customers, orders, spine)
    data.orders                              # ~2M rows at scale 1
    data.spine                               # 100k rows at scale 1
    data.write_parquet("some/dir")           # {"customers": Path, "orders": Path, "spine": Path}

    deep = deep_history(scale=1.0)           # 100 customers x ~1,000 orders each, 100k-row spine
    latest = latest_per_entity(data.orders)  # one row per customer_id: the newest order (PIT at t=+inf)

Tables (all timestamps are ``timestamp[us, tz=UTC]``; events fall in ``[START, END)``):

- ``customers``: ``customer_id`` int64 (1..n), ``signup_ts``, ``segment`` utf8.
- ``orders`` (the feature source, sorted by ``event_ts``; every customer has at least one order):
  ``order_id`` int64, ``customer_id`` int64,
  ``event_ts`` (rounded to the second, so ties happen), ``loaded_at`` (the created / known-at time:
  minutes to hours after ``event_ts``; about 2% arrive 1-7 days late), then the 10 numeric features in
  ``FEATURES`` (float64 and int64, several with a few percent NULLs).
- ``spine``: ``customer_id`` int64 (about 1% are ids with no orders), ``label_ts``, ``label`` int64 0/1.

``scale`` multiplies every row count (customers, orders, spine); ``python -m bench.data --scale 0.1
--out DIR`` writes the Parquet files from the command line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 90
END = START + timedelta(days=DAYS)

TS = pa.timestamp("us", tz="UTC")

# (name, arrow type, NULL fraction)
FEATURES: tuple[tuple[str, pa.DataType, float], ...] = (
    ("amount", pa.float64(), 0.0),
    ("discount", pa.float64(), 0.05),
    ("shipping_cost", pa.float64(), 0.02),
    ("tax", pa.float64(), 0.0),
    ("margin", pa.float64(), 0.03),
    ("items", pa.int64(), 0.0),
    ("units", pa.int64(), 0.01),
    ("returns", pa.int64(), 0.04),
    ("page_views", pa.int64(), 0.02),
    ("support_tickets", pa.int64(), 0.05),
)
FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in FEATURES)

_US_PER_S = 1_000_000
_US_PER_DAY = 86_400 * _US_PER_S
_START_US = int(START.timestamp()) * _US_PER_S


@dataclass(frozen=True)
class Dataset:
    customers: pa.Table
    orders: pa.Table
    spine: pa.Table

    def write_parquet(self, directory: str | Path) -> dict[str, Path]:
        """Write ``customers.parquet``, ``orders.parquet`` and ``spine.parquet`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in ("customers", "orders", "spine"):
            path = out / f"{name}.parquet"
            pq.write_table(getattr(self, name), path)
            paths[name] = path
        return paths


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.int64()).view(TS)


def _with_nulls(rng: np.random.Generator, values: np.ndarray, fraction: float, type_: pa.DataType):
    mask = rng.random(len(values)) < fraction if fraction else None
    return pa.array(values, type=type_, mask=mask)


def _orders(rng: np.random.Generator, customer_ids: np.ndarray) -> pa.Table:
    n = len(customer_ids)
    event_us = _START_US + rng.integers(0, DAYS * _US_PER_DAY, n)
    event_us -= event_us % _US_PER_S  # whole seconds: equal event timestamps happen, as in real logs
    # Loading delay: log-normal around ~20 minutes, capped at a few hours; ~2% land days later.
    delay_s = np.minimum(np.exp(rng.normal(7.0, 1.0, n)), 6 * 3600)
    late = rng.random(n) < 0.02
    delay_s = np.where(late, rng.integers(86_400, 7 * 86_400, n), delay_s)
    loaded_us = event_us + (delay_s * _US_PER_S).astype(np.int64)

    order = np.argsort(event_us, kind="stable")
    event_us, loaded_us, customer_ids = event_us[order], loaded_us[order], customer_ids[order]

    amount = np.round(rng.lognormal(3.5, 0.8, n), 2)
    items = rng.poisson(2.0, n) + 1
    columns: dict[str, np.ndarray] = {
        "amount": amount,
        "discount": np.round(amount * rng.beta(1.0, 8.0, n), 2),
        "shipping_cost": np.round(rng.choice([0.0, 4.99, 9.99], n, p=[0.5, 0.35, 0.15]), 2),
        "tax": np.round(amount * 0.08, 2),
        "margin": np.round(rng.normal(0.25, 0.1, n), 4),
        "items": items,
        "units": items * rng.integers(1, 4, n),
        "returns": rng.binomial(items, 0.05),
        "page_views": rng.negative_binomial(3, 0.2, n),
        "support_tickets": rng.poisson(0.1, n),
    }
    arrays = {
        "order_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "customer_id": pa.array(customer_ids.astype(np.int64)),
        "event_ts": _ts(event_us),
        "loaded_at": _ts(loaded_us),
    }
    for name, type_, null_fraction in FEATURES:
        arrays[name] = _with_nulls(rng, columns[name], null_fraction, type_)
    return pa.table(arrays)


def _customers(rng: np.random.Generator, n: int) -> pa.Table:
    signup = _START_US - rng.integers(0, 3 * 365 * _US_PER_DAY, n)
    segments = np.array(["consumer", "smb", "enterprise"])
    return pa.table(
        {
            "customer_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "signup_ts": _ts(signup - signup % _US_PER_S),
            "segment": pa.array(segments[rng.choice(3, n, p=[0.8, 0.15, 0.05])]),
        }
    )


def _spine(rng: np.random.Generator, n_rows: int, n_customers: int) -> pa.Table:
    ids = rng.integers(1, n_customers + 1, n_rows)
    unknown = rng.random(n_rows) < 0.01
    ids = np.where(unknown, n_customers + 1 + rng.integers(0, max(n_customers, 1), n_rows), ids)
    # Labels mostly in the later part of the window so most spine rows have history to join.
    label_us = _START_US + rng.integers(DAYS * _US_PER_DAY // 3, DAYS * _US_PER_DAY, n_rows)
    return pa.table(
        {
            "customer_id": pa.array(ids.astype(np.int64)),
            "label_ts": _ts(label_us),
            "label": pa.array((rng.random(n_rows) < 0.2).astype(np.int64)),
        }
    )


def generate(
    scale: float = 1.0,
    *,
    seed: int = 42,
    customers: int = 100_000,
    orders: int = 2_000_000,
    spine_rows: int = 100_000,
) -> Dataset:
    """Many customers with a few orders each: ~20 per customer on average, skewed (some have hundreds)."""
    rng = np.random.default_rng(seed)
    n_customers = max(1, int(customers * scale))
    n_orders = max(1, int(orders * scale))
    # Every customer orders at least once (so the latest-per-entity table has n_customers rows); the
    # rest follow gamma-distributed activity: a long tail of heavy buyers, like real order logs.
    weights = rng.gamma(0.8, 1.0, n_customers)
    extra = rng.choice(
        np.arange(1, n_customers + 1), max(0, n_orders - n_customers), p=weights / weights.sum()
    )
    ids = np.concatenate([np.arange(1, n_customers + 1)[:n_orders], extra])
    return Dataset(
        customers=_customers(rng, n_customers),
        orders=_orders(rng, ids),
        spine=_spine(rng, max(1, int(spine_rows * scale)), n_customers),
    )


def deep_history(
    scale: float = 1.0,
    *,
    seed: int = 7,
    customers: int = 100,
    rows_per_customer: int = 1_000,
    spine_rows: int = 100_000,
) -> Dataset:
    """Few customers with a long history each (~1,000 orders): stresses as-of search, not hashing."""
    rng = np.random.default_rng(seed)
    n_customers = max(1, int(customers * scale))
    n_orders = n_customers * rows_per_customer
    ids = rng.integers(1, n_customers + 1, n_orders)
    return Dataset(
        customers=_customers(rng, n_customers),
        orders=_orders(rng, ids),
        spine=_spine(rng, max(1, int(spine_rows * scale)), n_customers),
    )


def latest_per_entity(
    orders: pa.Table,
    keys: tuple[str, ...] = ("customer_id",),
    event_ts: str = "event_ts",
    created: str = "loaded_at",
) -> pa.Table:
    """The newest row per entity: greatest ``event_ts``, ties to the greatest ``created`` (PIT at +inf).

    Remaining ties (exact duplicates in time) go to the last row in table order, which is deterministic.
    ``created`` must be non-NULL here (the generated data has no NULL ``loaded_at``).
    """
    if not orders.num_rows:
        return orders
    sort_keys = [orders.column(created).cast(pa.int64()).to_numpy()]
    sort_keys.append(orders.column(event_ts).cast(pa.int64()).to_numpy())
    sort_keys.extend(orders.column(k).to_numpy() for k in reversed(keys))
    order = np.lexsort(sort_keys)  # primary: keys, then event_ts, then created
    sorted_keys = [orders.column(k).to_numpy()[order] for k in keys]
    last = np.ones(len(order), dtype=bool)
    change = np.zeros(len(order) - 1, dtype=bool)
    for column in sorted_keys:
        change |= column[1:] != column[:-1]
    last[:-1] = change
    return orders.take(pa.array(order[last]))


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the fsql benchmark dataset as Parquet.")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--deep", action="store_true", help="the deep-history variant")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = deep_history(args.scale, seed=args.seed) if args.deep else generate(args.scale, seed=args.seed)
    for name, path in data.write_parquet(args.out).items():
        print(f"{name}: {getattr(data, name).num_rows:,} rows -> {path}")


if __name__ == "__main__":
    main()
