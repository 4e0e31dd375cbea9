"""Parsing: header grammar, Jinja with line mapping, references, projections and the view DAG."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from fsql.config import load_config
from fsql.errors import ConfigError, FeatureFileError, ResolutionError
from fsql.parsing.header import parse_duration, parse_header
from fsql.parsing.project import parse_project
from fsql.parsing.templating import Renderer, line_map

TOML = """
[project]
name = "t"

[vars]
days = 7

[entities.customer]
keys = ["customer_id"]

[entities.pair]
keys = ["customer_id", "merchant_id"]

[sources.orders]
path = "orders.parquet"
"""


def project(tmp_path: Path, files: dict[str, str], toml: str = TOML) -> Path:
    (tmp_path / "fsql.toml").write_text(toml)
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "features").mkdir(exist_ok=True)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("15m", timedelta(minutes=15)),
     ("45s", timedelta(seconds=45)), ("2w", timedelta(weeks=2)), ("30 days", None), ("d", None), ("1.5d", None)],
)
def test_durations(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text) == expected


def test_header_values_lines_and_description() -> None:
    text = "-- @feature_view v\n-- A description\n--   over two lines\n-- @tags a, b ,c\n-- @ttl 1h\n\nSELECT 1"
    header = parse_header(text, "f.sql")
    assert header.kind == "feature_view"
    assert header.values["tags"] == ("a", "b", "c")
    assert header.values["ttl"] == timedelta(hours=1)
    assert header.lines == {"feature_view": 1, "tags": 4, "ttl": 5}
    assert header.description == "A description over two lines"
    assert header.body_start == 7


def test_header_rejects_duplicates_and_bad_identifiers() -> None:
    with pytest.raises(FeatureFileError, match="given twice"):
        parse_header("-- @feature_view a\n-- @feature_view b\nSELECT 1", "f.sql")
    with pytest.raises(FeatureFileError, match="plain identifier") as info:
        parse_header("-- @feature_view a\n-- @entity my-entity\nSELECT 1", "f.sql")
    assert str(info.value).startswith("f.sql:2: ")


def test_line_map_follows_unchanged_lines() -> None:
    source = "a\n{% for i in range(3) %}\nx{{ i }}\n{% endfor %}\nb\nc\n"
    rendered = "a\n\nx0\n\nx1\n\nx2\n\nb\nc\n"
    mapping = line_map(source, rendered)
    assert mapping[0] == 1
    assert mapping[rendered.splitlines().index("b")] == 5
    assert mapping[rendered.splitlines().index("c")] == 6


JINJA_VIEW = (
    "-- @feature_view v\n-- @entity customer\n-- @timestamp ts\n"  # lines 1-3
    "{% set cols = ['a', 'b'] %}\n"  # 4
    "SELECT\n    customer_id,\n    ts,\n"  # 5-7
    "{% for c in cols %}\n    {{ trailing(c, var('days')) }} AS sum_{{ c }},\n{% endfor %}\n"  # 8-10
    "    1 AS one\nFROM orders\nWHERE nope_column > 0 AND missing_table.x = 1\n"  # 11-13
)
TRAILING = (
    "{% macro trailing(col, days) %}SUM({{ col }}) OVER (PARTITION BY customer_id ORDER BY ts "
    "RANGE BETWEEN INTERVAL {{ days }} DAYS PRECEDING AND CURRENT ROW){% endmacro %}"
)


def test_jinja_macros_and_vars_and_error_lines(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fsql.store import Store

    root = project(tmp_path, {"macros/util.sql": TRAILING, "features/v.sql": JINJA_VIEW})
    parsed = parse_project(load_config(root))
    view = parsed.views["v"]
    assert [n for n, _ in view.projections] == ["customer_id", "ts", "sum_a", "sum_b", "one"]
    assert view.query.sql("duckdb").count("RANGE BETWEEN INTERVAL '7' DAYS PRECEDING") == 2
    # Lines the template leaves alone map to themselves; the lines the loop wrote map to where the
    # loop starts in the file; the body after the loop maps back to the file's own lines.
    rendered = Renderer({"days": 7}, root / "macros", root).render(JINJA_VIEW, "features/v.sql")[0]
    lines = {text.strip(): view.file_line(i + 1) for i, text in enumerate(rendered.splitlines()) if text.strip()}
    assert lines["SELECT"] == 5 and lines["ts,"] == 7
    assert [line for text, line in lines.items() if text.startswith("SUM(")] == [8, 8]
    assert (lines["1 AS one"], lines["FROM orders"], lines["WHERE nope_column > 0 AND missing_table.x = 1"]) == (11, 12, 13)
    assert view.references == {"orders": 12}

    # The engine's errors point at the line that names the unknown column, then the unknown table.
    pq.write_table(pa.table({"customer_id": [1], "ts": pa.array([0], pa.timestamp("us")), "a": [1.0], "b": [2.0]}),
                   root / "orders.parquet")
    for fix, name in ((None, "nope_column"), (("nope_column > 0", "a > 0"), "missing_table")):
        if fix:
            path = root / "features" / "v.sql"
            path.write_text(path.read_text().replace(*fix))
        with Store(root) as store, pytest.raises(FeatureFileError) as info:
            store.build()
        assert str(info.value).startswith("features/v.sql:13: "), str(info.value)
        assert name in str(info.value)
    # An error raised while the loop renders points at the loop body's line.
    path = root / "features" / "v.sql"
    path.write_text(path.read_text().replace("var('days')", "var('weeks')"))
    with pytest.raises(FeatureFileError) as info:
        parse_project(load_config(root))
    assert str(info.value).startswith("features/v.sql:9: Jinja error: var 'weeks' is not defined"), str(info.value)


def test_jinja_error_points_at_the_template_line(tmp_path: Path) -> None:
    root = project(tmp_path, {
        "features/v.sql": "-- @feature_view v\n-- @entity customer\n-- @timestamp ts\nSELECT customer_id, ts,\n  {{ 1 / 0 }} AS x\nFROM orders\n",
    })
    with pytest.raises(FeatureFileError) as info:
        parse_project(load_config(root))
    assert str(info.value).startswith("features/v.sql:5: Jinja error")


def test_references_skip_ctes(tmp_path: Path) -> None:
    root = project(tmp_path, {
        "features/v.sql": (
            "-- @feature_view v\n-- @entity customer\n-- @timestamp ts\n"
            "WITH recent AS (SELECT * FROM orders)\n"
            "SELECT r.customer_id, r.ts, w.x FROM recent AS r JOIN recent AS w ON r.customer_id = w.customer_id\n"
        ),
    })
    view = parse_project(load_config(root)).views["v"]
    assert view.references == {"orders": 4}


def test_view_order_is_topological_and_fingerprints_follow_upstream(tmp_path: Path) -> None:
    files = {
        "features/b.sql": "-- @feature_view b\n-- @entity customer\n-- @timestamp ts\nSELECT customer_id, ts, x + 1 AS y FROM a\n",
        "features/a.sql": "-- @feature_view a\n-- @entity customer\n-- @timestamp ts\nSELECT customer_id, ts, amount AS x FROM orders\n",
    }
    root = project(tmp_path, files)
    first = parse_project(load_config(root))
    assert list(first.views) == ["a", "b"]
    # Changing only a comment leaves fingerprints alone; changing a's logic changes b's too.
    (root / "features/a.sql").write_text(files["features/a.sql"].replace("AS x ", "AS x -- the amount\n"))
    second = parse_project(load_config(root))
    assert second.views["a"].fingerprint == first.views["a"].fingerprint
    (root / "features/a.sql").write_text(files["features/a.sql"].replace("amount AS x", "amount * 2 AS x"))
    third = parse_project(load_config(root))
    assert third.views["a"].fingerprint != first.views["a"].fingerprint
    assert third.views["b"].fingerprint != first.views["b"].fingerprint


def test_self_reference_is_an_error(tmp_path: Path) -> None:
    root = project(tmp_path, {
        "features/a.sql": "-- @feature_view a\n-- @entity customer\n-- @timestamp ts\nSELECT customer_id, ts, x FROM a\n",
    })
    with pytest.raises(ResolutionError, match="reads itself"):
        parse_project(load_config(root))


def test_composite_entity_keys_must_all_be_selected(tmp_path: Path) -> None:
    root = project(tmp_path, {
        "features/p.sql": "-- @feature_view p\n-- @entity pair\n-- @timestamp ts\nSELECT customer_id, ts, 1 AS n FROM orders\n",
    })
    with pytest.raises(FeatureFileError, match="'merchant_id' of entity 'pair'"):
        parse_project(load_config(root))


def test_config_env_expansion_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = TOML + '\n[warehouse]\nengine = "postgres"\nurl = "${FSQL_TEST_URL_X:-postgresql://fallback/db}"\n'
    root = project(tmp_path, {}, toml)
    assert load_config(root).warehouse.url == "postgresql://fallback/db"  # type: ignore[union-attr]
    monkeypatch.setenv("FSQL_TEST_URL_X", "postgresql://from-env/db")
    assert load_config(root).warehouse.url == "postgresql://from-env/db"  # type: ignore[union-attr]
    overridden = load_config(root, {"online": {"store": "redis", "url": "redis://127.0.0.1:6379/3"}})
    assert overridden.online.store == "redis" and overridden.online.url.endswith("/3")  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="unknown online store 'redsi'; did you mean 'redis'"):
        load_config(root, {"online": {"store": "redsi"}})
