"""The SDK facade on the example project: spines of every kind give the same training set."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

import fsql
from fsql.errors import FsqlError
from tests.projects import example_project


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> fsql.Store:
    project = example_project(tmp_path_factory.mktemp("sdk") / "proj", tmp_path_factory.getbasetemp())
    store = fsql.Store(project)
    store.build()
    yield store
    store.close()


def test_spines_of_every_kind_agree(store: fsql.Store) -> None:
    labels = pl.from_arrow(pq.read_table(store.config.root / "data" / "churn_labels.parquet"))
    labels = labels.filter(pl.col("label_ts") >= pl.datetime(2026, 2, 1))
    from_set = store.training_set("churn")
    from_polars = store.training_set("churn", spine=labels)
    from_pandas = store.training_set("churn", spine=labels.to_pandas())
    from_arrow = store.training_set("churn", spine=labels.to_arrow())
    from_sql = store.training_set(
        "churn", spine="SELECT customer_id, label_ts, churned FROM churn_labels WHERE label_ts >= TIMESTAMP '2026-02-01'"
    )
    assert from_polars.height == labels.height
    # DataFrame spines keep their row order exactly; the spine columns come back unchanged.
    assert from_polars.select(labels.columns).equals(labels)
    assert from_pandas.equals(from_polars) and from_arrow.equals(from_polars)
    key = ["customer_id", "label_ts", "churned"]
    for other in (from_set, from_sql):
        assert other.sort(key).equals(from_polars.sort(key))
    assert from_polars.columns == [
        "customer_id", "label_ts", "churned", "spend_30d", "orders_30d", "avg_order_value_30d", "country", "segment", "age",
    ]


def test_ad_hoc_features_and_name_collisions(store: fsql.Store) -> None:
    spine = pd.DataFrame({"customer_id": [1, 2, 3], "ts": pd.to_datetime(["2026-06-01"] * 3)})
    frame = store.training_set(
        features=["customer_spend.spend_30d", "customer_value.*", "customer_profile.age"], spine=spine, timestamp="ts"
    )
    assert frame.columns == ["customer_id", "ts", "spend_30d", "avg_order_value_30d", "high_spender", "age"]
    # A feature named like a spine column is prefixed with its view.
    clash = store.training_set(features=["customer_profile.age"], spine=spine.assign(age=1), timestamp="ts")
    assert clash.columns == ["customer_id", "ts", "age", "customer_profile__age"]


def test_event_time_mode_can_see_late_rows(store: fsql.Store) -> None:
    late = store.query(
        "SELECT customer_id, event_ts, loaded_at FROM customer_spend WHERE loaded_at > event_ts + INTERVAL 1 DAY LIMIT 20"
    )
    assert late.height > 0
    spine = late.select("customer_id", pl.col("event_ts").alias("ts"))
    known = store.training_set(features=["customer_spend.spend_30d"], spine=spine, timestamp="ts")
    feast = store.training_set(features=["customer_spend.spend_30d"], spine=spine, timestamp="ts", pit_mode="event-time")
    # At its own event time a late row is not yet known, so the known-at value differs from event-time's.
    assert (known["spend_30d"].fill_null(-1) != feast["spend_30d"].fill_null(-1)).any()


def test_feature_views_and_query(store: fsql.Store) -> None:
    names = {v.name: v for v in store.feature_views()}
    assert names["customer_merchant_stats"].entity_keys == ("customer_id", "merchant_id")
    assert names["customer_spend"].owner == "growth-team"
    assert store.query("SELECT count(*) AS n FROM customer_profile")["n"][0] > 0


def test_bad_requests_are_clear(store: fsql.Store) -> None:
    spine = pl.DataFrame({"customer_id": [1]})
    with pytest.raises(FsqlError, match="the spine has no column 'ts'"):
        store.training_set(features=["customer_spend.spend_30d"], spine=spine, timestamp="ts")
    with pytest.raises(FsqlError, match="has no feature 'spend'; did you mean 'spend_30d'"):
        store.training_set(features=["customer_spend.spend"], spine=spine, timestamp="ts")
    with pytest.raises(FsqlError, match="no training set named 'chrun'; did you mean 'churn'"):
        store.training_set("chrun")
    with pytest.raises(FsqlError, match="unknown PIT mode"):
        store.training_set("churn", pit_mode="sometimes")  # type: ignore[arg-type]


def test_store_reads_sections_overrides(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    project = example_project(tmp_path / "proj", tmp_path_factory.getbasetemp())
    with fsql.Store(project, online={"store": "redis", "url": "redis://127.0.0.1:6379/0", "prefix": "x"}) as s:
        assert s.config.online.store == "redis"
