"""No training/serving skew (DESIGN.md section 4): for every entity, ``online(now)`` equals the
point-in-time training set with spine ``(entity, now)``, on DuckDB+SQLite, DuckDB+Redis,
PostgreSQL+Redis and DuckDB+Redis Cluster (three private masters).

Hypothesis draws small histories full of edge cases: equal timestamps and exact ties that only the
feature values break (NaN above +Infinity, NULL lowest, strings in byte order), NULL and late
``created`` times, rows known before their event, NULL keys and NULL event times, NaN / NULL / ''
values, int64 values beyond 2**53, events exactly at ``now - ttl``, events and known times after the
run end, keys with ``:`` and ``%`` (the online key encoding escapes them) and the string key "None",
and requested entities with no history or a NULL key part. Three views read them: a composite-key
view with ``@created``, a composite-key view with ``@created``, a TTL and naive (time-zone-less)
timestamps, and a single-key TTL view without ``@created``.

Each example materializes up to ``end1`` and compares; then late rows arrive (known after ``end1``,
some with an event time long before it; the TTL view without ``@created`` gets new events after
``end1``, the only way such a view can learn anything late), an incremental run goes to ``end2``
and the comparison is repeated. Both sides are also checked against a small pure-Python model of
the PIT rules, so a mistake shared by the offline and online paths does not go unnoticed.

``now`` is always explicit (``end=`` / ``now=`` / the spine time), never the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from conftest import POSTGRES_URL, REDIS_URL
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.service_adapter import Service

TS = pa.timestamp("us", tz="UTC")
END1 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)

K1 = [1, 2, 3]
K2 = ["a", "B", "x:y", "None"]
# requested entities: every combination, ids with no history, and NULL key parts
ENTITIES = [(k1, k2) for k1 in [*K1, 4] for k2 in [*K2, "zz"]] + [(None, "a"), (1, None), (None, None)]

X_VALUES = [None, math.nan, math.inf, -math.inf, 0.0, 1.5, -2.25]
S_VALUES = [None, "", "a", "B", "é", "a:b%"]
N_VALUES = [None, 0, -7, 2**62 + 1, 2**53 + 1]

CONFIG = """
[project]
name = "skew"
dialect = "duckdb"

[warehouse]
engine = "duckdb"
path = ".fsql/warehouse.duckdb"
schema = "fsql"

[entities.user]
keys = ["k1"]

[entities.pair]
keys = ["k1", "k2"]

[sources.events]
path = "events.parquet"

[sources.ttl_events]
path = "ttl_events.parquet"
"""

FILES = {
    "pair_known.sql": """\
-- @feature_view pair_known
-- @entity pair
-- @timestamp event_ts
-- @created created
-- Composite key, known-at column, no TTL.
SELECT k1, k2, event_ts, created, x, s, n FROM events
""",
    "pair_ttl.sql": """\
-- @feature_view pair_ttl
-- @entity pair
-- @timestamp event_ts
-- @created created
-- @ttl 90m
-- Composite key, known-at column, TTL, naive timestamps (UTC wall time).
SELECT k1, k2, CAST(event_ts AS TIMESTAMP) AS event_ts, CAST(created AS TIMESTAMP) AS created,
       x, n AS n2
FROM events
""",
    "user_ttl.sql": """\
-- @feature_view user_ttl
-- @entity user
-- @timestamp event_ts
-- @ttl 2h
-- Single key, TTL, no known-at column: a row is known at its event time.
SELECT k1, event_ts, x, s AS s3 FROM ttl_events
""",
}


# The views as the reference model sees them: keys, created column, TTL, feature columns in
# declared order (the tie-break order) and where each comes from in the generated rows.
@dataclass(frozen=True)
class ModelView:
    name: str
    keys: tuple[str, ...]
    created: bool
    ttl: timedelta | None
    features: tuple[tuple[str, str], ...]  # (feature name, row field)
    source: str


MODEL = (
    ModelView("pair_known", ("k1", "k2"), True, None, (("x", "x"), ("s", "s"), ("n", "n")), "events"),
    ModelView("pair_ttl", ("k1", "k2"), True, timedelta(minutes=90), (("x", "x"), ("n2", "n")), "events"),
    ModelView("user_ttl", ("k1",), False, timedelta(hours=2), (("x", "x"), ("s3", "s")), "ttl_events"),
)
REFS = [f"{v.name}.*" for v in MODEL]
# The same name in several views is served as <view>__<feature> on both paths.
OUTPUT = {
    ("pair_known", "x"): "pair_known__x",
    ("pair_known", "s"): "s",
    ("pair_known", "n"): "n",
    ("pair_ttl", "x"): "pair_ttl__x",
    ("pair_ttl", "n2"): "n2",
    ("user_ttl", "x"): "user_ttl__x",
    ("user_ttl", "s3"): "s3",
}


# --- data ------------------------------------------------------------------------------------------


def minutes(lo: int, hi: int, step: int = 15) -> st.SearchStrategy[int]:
    """Offsets on a coarse grid so that equal timestamps are frequent."""
    return st.integers(lo // step, hi // step).map(lambda i: i * step)


@st.composite
def event_row(
    draw: st.DrawFn, *, at: tuple[int, int], created_after: int | None, known: bool
) -> dict[str, Any]:
    """One source row; times are minute offsets from END1, resolved by ``materialize_rows``."""
    k1 = draw(st.sampled_from([*K1, None]) if draw(st.integers(0, 19)) == 0 else st.sampled_from(K1))
    k2 = draw(st.sampled_from([*K2, None]) if draw(st.integers(0, 19)) == 0 else st.sampled_from(K2))
    event = draw(minutes(*at))
    if draw(st.integers(0, 29)) == 0:
        event = None
    created: int | None = None
    if known:
        if created_after is not None:  # a late row: known only after the previous run's end
            created = draw(minutes(created_after + 15, created_after + 240))
        else:
            choice = draw(st.sampled_from(["null", "same", "later", "much_later", "earlier"]))
            base = event if event is not None else 0
            created = {
                "null": None,
                "same": base,
                "later": base + draw(minutes(15, 60)),
                "much_later": base + draw(minutes(120, 480)),
                "earlier": base - draw(minutes(15, 60)),
            }[choice]
    return {
        "k1": k1,
        "k2": k2,
        "event": event,
        "created": created,
        "x": draw(st.sampled_from(X_VALUES)),
        "s": draw(st.sampled_from(S_VALUES)),
        "n": draw(st.sampled_from(N_VALUES)),
    }


def with_duplicates(rows: st.SearchStrategy[list[dict[str, Any]]]) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Copy some rows with only a feature value changed (exact (keys, event, created) ties) or as
    exact duplicates."""

    @st.composite
    def build(draw: st.DrawFn) -> list[dict[str, Any]]:
        base = draw(rows)
        out = list(base)
        for row in base:
            kind = draw(st.sampled_from(["none", "none", "dup", "x", "s", "n"]))
            if kind == "dup":
                out.append(dict(row))
            elif kind != "none":
                pool = {"x": X_VALUES, "s": S_VALUES, "n": N_VALUES}[kind]
                out.append({**row, kind: draw(st.sampled_from(pool))})
        return draw(st.permutations(out))

    return build()


@dataclass
class History:
    gap: int  # minutes from end1 to end2
    events: list[dict[str, Any]]
    ttl_events: list[dict[str, Any]]
    late_events: list[dict[str, Any]]
    late_ttl_events: list[dict[str, Any]]


@st.composite
def histories(draw: st.DrawFn) -> History:
    gap = draw(st.sampled_from([15, 90, 240]))
    # events up to 1 h after end1 (not yet eligible in the first run)
    events = draw(
        with_duplicates(st.lists(event_row(at=(-360, 60), created_after=None, known=True), max_size=25))
    )
    ttl_events = draw(
        with_duplicates(st.lists(event_row(at=(-360, 60), created_after=None, known=False), max_size=15))
    )
    # late rows: known after end1, events possibly long before it (or after end2)
    late = draw(st.lists(event_row(at=(-480, gap + 30), created_after=0, known=True), max_size=12))
    if events:  # late corrections: an existing event again, known after end1, with other values
        for row in draw(st.lists(st.sampled_from(events), max_size=4)):
            late.append({**row, "created": draw(minutes(15, 240)), "x": draw(st.sampled_from(X_VALUES))})
    # a view without @created only learns of rows by their event time: new events after end1
    late_ttl = draw(st.lists(event_row(at=(15, gap + 60), created_after=None, known=False), max_size=8))
    return History(gap, events, ttl_events, late, late_ttl)


def at(offset: int | None, *, naive: bool = False) -> datetime | None:
    if offset is None:
        return None
    value = END1 + offset * MINUTE
    return value.replace(tzinfo=None) if naive else value


def source_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {
            "k1": pa.array([r["k1"] for r in rows], pa.int64()),
            "k2": pa.array([r["k2"] for r in rows], pa.string()),
            "event_ts": pa.array([at(r["event"]) for r in rows], TS),
            "created": pa.array([at(r["created"]) for r in rows], TS),
            "x": pa.array([r["x"] for r in rows], pa.float64()),
            "s": pa.array([r["s"] for r in rows], pa.string()),
            "n": pa.array([r["n"] for r in rows], pa.int64()),
        }
    )


# --- the reference model of the PIT rules ---------------------------------------------------------


def _value_rank(value: Any) -> tuple:
    """DESC NULLS LAST with NaN above +Infinity, strings in code point (UTF-8 byte) order."""
    if value is None:
        return (0,)
    if isinstance(value, float) and math.isnan(value):
        return (1, 1, 0.0)
    return (1, 0, value)


def reference(
    view: ModelView, rows: list[dict[str, Any]], entity: dict[str, Any], now_offset: int
) -> tuple[str, dict[str, Any]]:
    """(status, {feature: value}) that the PIT rules give for ``entity`` at END1 + now_offset."""
    none = {f: None for f, _ in view.features}
    if any(entity[k] is None for k in view.keys):
        return "missing", none
    candidates = [
        r
        for r in rows
        if all(r[k] == entity[k] for k in view.keys)
        and r["event"] is not None
        and r["event"] <= now_offset
        and (not view.created or r["created"] is None or r["created"] <= now_offset)
    ]
    if not candidates:
        return "missing", none

    def order(r: dict[str, Any]) -> tuple:
        # Ties go to the greatest known time: the load time, or the event time when there is none.
        known = r["created"] if view.created and r["created"] is not None else r["event"]
        return (r["event"], known, *(_value_rank(r[field]) for _, field in view.features))

    winner = max(candidates, key=order)
    if view.ttl is not None and END1 + winner["event"] * MINUTE < END1 + now_offset * MINUTE - view.ttl:
        return "stale", none
    return "present", {f: winner[field] for f, field in view.features}


# --- comparison ------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def check_no_skew(service: Service, rows: dict[str, list[dict[str, Any]]], now_offset: int) -> None:
    now = END1 + now_offset * MINUTE
    k1s = [e[0] for e in ENTITIES]
    k2s = [e[1] for e in ENTITIES]
    online = service.online(REFS, {"k1": k1s, "k2": k2s}, now=now, as_dicts=True)
    spine = pa.table(
        {
            "k1": pa.array(k1s, pa.int64()),
            "k2": pa.array(k2s, pa.string()),
            "ts": pa.array([now] * len(ENTITIES), TS),
        }
    )
    offline = service.training_set(features=REFS, spine=spine, timestamp="ts").to_pylist()
    assert len(online) == len(offline) == len(ENTITIES)
    problems = []
    for entity, on, off in zip(ENTITIES, online, offline, strict=True):
        assert (off["k1"], off["k2"]) == entity, "training set rows are not in spine order"
        keys = {"k1": entity[0], "k2": entity[1]}
        for view in MODEL:
            status, expected = reference(view, rows[view.source], keys, now_offset)
            for feature, _ in view.features:
                column = OUTPUT[(view.name, feature)]
                if not same(on[column], off[column]):
                    problems.append(
                        f"SKEW {view.name}.{feature} for {entity} at {now}: online {on[column]!r} "
                        f"({on[column + '__status']}) != training set {off[column]!r}"
                    )
                if on[column + "__status"] != status or not same(on[column], expected[feature]):
                    problems.append(
                        f"{view.name}.{feature} for {entity} at {now}: online {on[column]!r} "
                        f"({on[column + '__status']}), the PIT rules give {expected[feature]!r} ({status})"
                    )
                if not same(off[column], expected[feature]):
                    problems.append(
                        f"{view.name}.{feature} for {entity} at {now}: training set {off[column]!r}, "
                        f"the PIT rules give {expected[feature]!r} ({status})"
                    )
    assert not problems, "\n".join(problems[:20])


# --- combos ----------------------------------------------------------------------------------------


@pytest.fixture(params=["duckdb-sqlite", "duckdb-redis", "postgres-redis", "duckdb-redis-cluster"])
def combo(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, dict[str, Any]], str | None]]:
    """(name, overrides shared by every example, redis prefix base or None)."""
    name = request.param
    overrides: dict[str, dict[str, Any]] = {}
    prefix = None
    if name.startswith("postgres"):
        schema = request.getfixturevalue("pg_schema")
        overrides["warehouse"] = {"engine": "postgres", "url": POSTGRES_URL, "schema": schema}
    if name.endswith("redis"):
        prefix = request.getfixturevalue("redis_prefix")
    if name.endswith("redis-cluster"):
        prefix = request.getfixturevalue("redis_prefix")
        overrides["online"] = {"url": request.getfixturevalue("redis_cluster").url, "cluster": True}
    yield name, overrides, prefix


EXAMPLES = {"duckdb-sqlite": 60, "duckdb-redis": 60, "postgres-redis": 60, "duckdb-redis-cluster": 30}


def write_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "features").mkdir(parents=True)
    (root / "fsql.toml").write_text(CONFIG)
    for file, text in FILES.items():
        (root / "features" / file).write_text(text)
    return root


def open_service(root: Path, shared: dict[str, dict[str, Any]], prefix: str | None, tmp_path: Path, i: int) -> Service:
    """The project folder is reused; the registry and the online namespace are new per example."""
    overrides = {**shared, "registry": {"url": f"sqlite:///{tmp_path / f'registry_{i}.db'}"}}
    if prefix is None:
        overrides["online"] = {"store": "sqlite", "path": str(tmp_path / f"online_{i}.db")}
    else:  # a cluster's url and cluster flag come from the combo
        overrides["online"] = {"store": "redis", "url": REDIS_URL, **shared.get("online", {}), "prefix": f"{prefix}_{i}"}
    return Service.open(root, overrides)


def close_service(service: Service, prefix: str | None, i: int) -> None:
    cluster = service.config.online.store == "redis" and service.config.online.cluster
    service.close()
    if prefix is not None and not cluster:  # a private cluster is stopped with its keys
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}_{i}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def write_sources(root: Path, events: list[dict[str, Any]], ttl_events: list[dict[str, Any]]) -> None:
    pq.write_table(source_table(events), root / "events.parquet")
    pq.write_table(source_table(ttl_events), root / "ttl_events.parquet")


def test_online_equals_training_set(
    combo: tuple[str, dict[str, dict[str, Any]], str | None], tmp_path: Path
) -> None:
    name, shared, prefix = combo
    root = write_project(tmp_path)
    counter = iter(range(10**6))

    @settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(history=histories())
    def run(history: History) -> None:
        i = next(counter)
        write_sources(root, history.events, history.ttl_events)
        end2 = history.gap
        service = open_service(root, shared, prefix, tmp_path, i)
        try:
            service.build()
            first = service.materialize(end=END1)
            assert [r.outcome for r in first] == ["success"] * 3
            check_no_skew(service, {"events": history.events, "ttl_events": history.ttl_events}, 0)

            events = history.events + history.late_events
            ttl_events = history.ttl_events + history.late_ttl_events
            write_sources(root, events, ttl_events)
            if name.startswith("postgres"):
                # PostgreSQL holds file sources as tables that a build reloads; a build whose
                # definitions did not change returns early, so force the reload.
                service.build(force=True)
            second = service.materialize(end=END1 + end2 * MINUTE)
            assert all(r.outcome == "success" and r.start == END1 for r in second), second
            views, _ = service.definitions()
            for view in views.values():
                assert service.registry.watermark(view.name, view.version) == END1 + end2 * MINUTE
            check_no_skew(service, {"events": events, "ttl_events": ttl_events}, end2)

            # a full recompute as of the old state is superseded by what the store already holds (as of a
            # later time): nothing served changes, and the watermark does not move backwards
            backfill = service.materialize(full=True, end=END1)
            expected = "success" if end2 == 0 else "superseded"
            assert all(r.outcome == expected for r in backfill), backfill
            for view in views.values():
                assert service.registry.watermark(view.name, view.version) == END1 + end2 * MINUTE
            check_no_skew(service, {"events": events, "ttl_events": ttl_events}, end2)
        finally:
            close_service(service, prefix, i)

    run()


# --- value ties and in-place corrections --------------------------------------------------------


@dataclass
class Corrections:
    """Changes to the source rows after the first run: copies of rows with the same keys, event and
    created times but other feature values (ties only the values break, arriving late), and rows
    whose values are corrected in place."""

    tie_copies: list[dict[str, Any]]
    tie_copies_ttl: list[dict[str, Any]]
    in_place: dict[int, dict[str, Any]]  # index in History.events -> new values


@st.composite
def corrections(draw: st.DrawFn, history: History) -> Corrections:
    def other_values(row: dict[str, Any]) -> dict[str, Any]:
        field = draw(st.sampled_from(["x", "s", "n"]))
        pool = {"x": X_VALUES, "s": S_VALUES, "n": N_VALUES}[field]
        return {**row, field: draw(st.sampled_from([v for v in pool if not same(v, row[field])]))}

    ties = [other_values(r) for r in draw(st.lists(st.sampled_from(history.events), max_size=6))] if history.events else []
    ties_ttl = (
        [other_values(r) for r in draw(st.lists(st.sampled_from(history.ttl_events), max_size=4))]
        if history.ttl_events else []
    )
    indices = draw(st.lists(st.integers(0, len(history.events) - 1), max_size=4, unique=True)) if history.events else []
    return Corrections(ties, ties_ttl, {i: other_values(history.events[i]) for i in indices})


def test_online_equals_training_set_after_value_ties_corrections_and_full(
    combo: tuple[str, dict[str, dict[str, Any]], str | None], tmp_path: Path
) -> None:
    """After the first run, late copies of rows that only their values tell apart arrive and other
    rows are corrected in place; a ``--full`` run must then serve what the training set says."""
    name, shared, prefix = combo
    root = write_project(tmp_path)
    counter = iter(range(10**6))

    @settings(
        max_examples=EXAMPLES[name] // 3,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples every run
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.generate],  # each example is a build and two runs: no shrinking
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        history = data.draw(histories())
        changes = data.draw(corrections(history))
        i = next(counter)
        service = open_service(root, shared, prefix, tmp_path, i)
        try:
            write_sources(root, history.events, history.ttl_events)
            service.build()
            assert [r.outcome for r in service.materialize(end=END1)] == ["success"] * 3
            check_no_skew(service, {"events": history.events, "ttl_events": history.ttl_events}, 0)

            events = [changes.in_place.get(j, row) for j, row in enumerate(history.events)]
            events += history.late_events + changes.tie_copies
            ttl_events = history.ttl_events + history.late_ttl_events + changes.tie_copies_ttl
            write_sources(root, events, ttl_events)
            if name.startswith("postgres"):
                service.build(force=True)
            end2 = history.gap
            full = service.materialize(full=True, end=END1 + end2 * MINUTE)
            assert all(r.outcome == "success" for r in full), full
            check_no_skew(service, {"events": events, "ttl_events": ttl_events}, end2)
        finally:
            close_service(service, prefix, i)

    run()
