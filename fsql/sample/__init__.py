"""The bundled example project: a sample dataset and the files `fsql init` writes.

The dataset is deterministic for a seed and an *anchor*, the day its rows end on. Writing it for the
current day keeps the example's 30-day features fresh whenever someone first runs it; tests pass a fixed
anchor (``SEED_ANCHOR``) so point-in-time answers never depend on the calendar.

The repository root is itself this example project; a test keeps the two identical. Its Parquet files
are not committed: ``data/sample.toml`` marks the folder as sample data, and ``ensure_fresh`` writes the
missing tables, ending today, the first time the project is built.
"""

from __future__ import annotations

import random
import shutil
import tomllib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fsql.errors import ConfigError, did_you_mean

PROJECT_FILES = Path(__file__).parent / "project"
# The marker that makes a data folder regenerable; it is part of the scaffold, so a project made with
# `fsql init --no-sample` or whose marker was deleted is never written to.
MARKER = Path("data") / "sample.toml"
# The anchor of the dataset the tests and golden files were written against (rows from 2026-01-01).
SEED_ANCHOR = date(2026, 11, 27)
DAYS = 330
CUSTOMERS = 2_000
MERCHANTS = 40
CURRENCIES = ("USD", "EUR", "GBP")
TABLES = ("customers", "orders", "fx_rates", "churn_labels")


def today() -> date:
    """The current day in UTC, the clock the sessions and the TTL checks use."""
    return datetime.now(UTC).date()


def generate(seed: int = 7, anchor: date | None = None) -> dict[str, pa.Table]:
    """The sample tables, with rows from ``anchor - 330 days`` up to ``anchor`` (default: today, UTC).

    Deterministic for a seed and an anchor: the same values on every machine. Changing the anchor moves
    every timestamp by the same amount and changes nothing else.
    """
    rng = random.Random(seed)
    start = datetime.combine(anchor or today(), datetime.min.time()) - timedelta(days=DAYS)

    def ts(day: float) -> datetime:
        return start + timedelta(seconds=round(day * 86_400))

    customers: dict[str, list] = {k: [] for k in ("customer_id", "updated_at", "country", "segment", "age")}
    for cid in range(1, CUSTOMERS + 1):
        age = rng.randint(18, 80)
        segment = rng.choice(["consumer", "smb", "enterprise"])
        day = rng.uniform(0, 30)
        # Profiles change over time: every snapshot is a row, so the PIT join matters here too.
        for _ in range(rng.choice([1, 1, 2, 3])):
            customers["customer_id"].append(cid)
            customers["updated_at"].append(ts(day))
            customers["country"].append(rng.choice(["US", "DE", "GB", "FR", "NL"]))
            customers["segment"].append(segment if rng.random() < 0.8 else rng.choice(["consumer", "smb"]))
            customers["age"].append(age)
            day += rng.uniform(20, 150)
            if day > DAYS:
                break

    orders: dict[str, list] = {
        k: [] for k in ("order_id", "customer_id", "merchant_id", "order_ts", "loaded_at", "amount", "currency")
    }
    order_id = 0
    for cid in range(1, CUSTOMERS + 1):
        rate = rng.uniform(0.01, 0.08)  # orders per day
        day = rng.uniform(0, 20)
        favourite = rng.sample(range(1, MERCHANTS + 1), 3)
        while True:
            day += rng.expovariate(rate)
            if day > DAYS:
                break
            order_id += 1
            event = ts(day)
            # Most rows land within minutes; a few are loaded days late (a backfill).
            lag = timedelta(minutes=rng.randint(1, 90)) if rng.random() < 0.95 else timedelta(days=rng.randint(1, 10))
            orders["order_id"].append(order_id)
            orders["customer_id"].append(cid)
            orders["merchant_id"].append(rng.choice(favourite) if rng.random() < 0.8 else rng.randint(1, MERCHANTS))
            orders["order_ts"].append(event)
            orders["loaded_at"].append(event + lag)
            orders["amount"].append(round(rng.lognormvariate(3.5, 0.8), 2))
            orders["currency"].append(rng.choice(CURRENCIES))

    fx: dict[str, list] = {k: [] for k in ("currency", "rate_ts", "rate_to_usd")}
    base = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}
    for currency in CURRENCIES:
        value = base[currency]
        for day in range(DAYS + 1):
            if currency != "USD":
                value = round(value * (1 + rng.gauss(0, 0.004)), 5)
            fx["currency"].append(currency)
            fx["rate_ts"].append(ts(day))
            fx["rate_to_usd"].append(value)

    labels: dict[str, list] = {k: [] for k in ("customer_id", "label_ts", "churned")}
    for _ in range(5_000):
        labels["customer_id"].append(rng.randint(1, CUSTOMERS + 50))  # a few customers with no history
        labels["label_ts"].append(ts(rng.uniform(30, DAYS)))
        labels["churned"].append(rng.random() < 0.2)

    tss = pa.timestamp("us")
    return {
        "customers": pa.table(
            {
                "customer_id": pa.array(customers["customer_id"], pa.int64()),
                "updated_at": pa.array(customers["updated_at"], tss),
                "country": pa.array(customers["country"], pa.string()),
                "segment": pa.array(customers["segment"], pa.string()),
                "age": pa.array(customers["age"], pa.int32()),
            }
        ),
        "orders": pa.table(
            {
                "order_id": pa.array(orders["order_id"], pa.int64()),
                "customer_id": pa.array(orders["customer_id"], pa.int64()),
                "merchant_id": pa.array(orders["merchant_id"], pa.int64()),
                "order_ts": pa.array(orders["order_ts"], tss),
                "loaded_at": pa.array(orders["loaded_at"], tss),
                "amount": pa.array(orders["amount"], pa.float64()),
                "currency": pa.array(orders["currency"], pa.string()),
            }
        ),
        "fx_rates": pa.table(
            {
                "currency": pa.array(fx["currency"], pa.string()),
                "rate_ts": pa.array(fx["rate_ts"], tss),
                "rate_to_usd": pa.array(fx["rate_to_usd"], pa.float64()),
            }
        ),
        "churn_labels": pa.table(
            {
                "customer_id": pa.array(labels["customer_id"], pa.int64()),
                "label_ts": pa.array(labels["label_ts"], tss),
                "churned": pa.array(labels["churned"], pa.bool_()),
            }
        ),
    }


def write_data(
    directory: Path, seed: int = 7, anchor: date | None = None, *, only: set[str] | None = None
) -> dict[str, Path]:
    """Write the sample tables (or the ``only`` ones) as ``directory/<table>.parquet``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in generate(seed, anchor).items():
        if only is not None and name not in only:
            continue
        path = directory / f"{name}.parquet"
        # Written aside and renamed, so a build never scans a half-written file.
        partial = path.with_name(path.name + ".tmp")
        pq.write_table(table, partial, compression="zstd")
        partial.replace(path)
        written[name] = path
    return written


def ensure_fresh(root: Path, anchor: date | None = None) -> list[Path]:
    """Write the sample tables missing from a project's sample data folder; return the files written.

    Only a folder holding the sample marker (``data/sample.toml``, written by ``fsql init`` and committed
    at the repository root) is touched, and only files that do not exist are written, so a user's own
    data is never overwritten. The rows end on ``anchor`` (default: today), so the first build of a
    fresh clone or project serves present values on any day. Cheap when nothing is missing: one
    ``stat`` per table.
    """
    marker = root / MARKER
    if not marker.is_file():
        return []
    seed, tables = _read_marker(marker)
    missing = {name for name in tables if not (marker.parent / f"{name}.parquet").exists()}
    if not missing:
        return []
    return sorted(write_data(marker.parent, seed, anchor, only=missing).values())


def _read_marker(marker: Path) -> tuple[int, list[str]]:
    def bad(problem: str, hint: str | None = None) -> ConfigError:
        return ConfigError(problem, path=str(marker),
                           hint=hint or "restore its seed and tables, or delete it if the data here is your own")

    try:
        spec = tomllib.loads(marker.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise bad(f"invalid sample marker: {e}") from None
    seed, tables = spec.get("seed", 7), spec.get("tables", [])
    if not isinstance(seed, int):
        raise bad(f"the sample seed must be an integer, not {seed!r}")
    if not isinstance(tables, list):
        raise bad(f"tables must be a list of sample table names, not {tables!r}")
    for name in tables:
        if name not in TABLES:
            raise bad(f"unknown sample table {name!r}; the sample has {', '.join(TABLES)}",
                      did_you_mean(str(name), TABLES))
    return seed, tables


def scaffold(target: Path, *, with_data: bool = True, anchor: date | None = None) -> list[Path]:
    """Write the example project into ``target`` (which must not hold an fsql.toml yet).

    With data, the tables end on ``anchor`` (default: today); tests pass ``SEED_ANCHOR``. Without, the
    sample marker is left out too, so no later build writes sample rows into the project.
    """
    target.mkdir(parents=True, exist_ok=True)
    created = []
    for file in sorted(PROJECT_FILES.rglob("*")):
        if file.is_dir() or file.name == "__pycache__" or file.suffix == ".pyc":
            continue
        if not with_data and file.relative_to(PROJECT_FILES) == MARKER:
            continue
        destination = target / file.relative_to(PROJECT_FILES)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, destination)
        created.append(destination)
    if with_data:
        created.extend(ensure_fresh(target, anchor))
    return created
