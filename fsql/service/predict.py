"""Scoring with registered models, the served-feature log, and the skew report.

A model is fed the training set's feature columns in the order recorded at build. Batch scoring
(``score_table``) takes the training set computed point-in-time for a spine; online scoring (the server)
takes the same columns read from the online store; both call ``LoadedModel.predict``, so for the same
entities at the same time they give the same predictions.

The server appends what it served to ``.fsql/logs/<model>/date=YYYY-MM-DD/*.parquet``; ``skew`` compares
those rows with the training set recomputed at each row's time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from fsql.definitions import Model, TrainingSet, as_utc, output_names
from fsql.errors import NotBuiltError, NotFoundError, RequestError, did_you_mean
from fsql.models import PREDICTION, LoadedModel, load_model, request_values
from fsql.service.context import Context

LOG_DIR = Path(".fsql") / "logs"
FEATURES_LOG = "features"  # the log of POST /v1/features, beside the models' logs
SERVED_AT = "served_at"
STATUS_SUFFIX = "__status"


def registered_model(ctx: Context, name: str) -> tuple[Model, TrainingSet]:
    """A model as the last build registered it, with its training set."""
    snapshot = ctx.registry.snapshot()
    model = snapshot.model_definitions.get(name)
    if model is None:
        raise NotFoundError(f"no model named '{name}'",
                            hint=did_you_mean(name, snapshot.model_definitions) or "declare it under [models] in "
                            "fsql.toml and run `fsql build`")
    training_set = snapshot.training_set_definitions.get(model.training_set)
    if training_set is None or not model.inputs:
        raise NotBuiltError(f"model '{name}' is not built", hint="run `fsql build`")
    return model, training_set


def set_columns(training_set: TrainingSet) -> dict[str, str]:
    """Feature ref (``view.feature``) → the training set's column name for it."""
    outputs = output_names(training_set.features, [c.name for c in training_set.spine_columns])
    return {str(ref): outputs[ref] for ref in training_set.features}


def load(ctx: Context, model: Model) -> LoadedModel:
    return load_model(model, ctx.config.root)


def score_table(model: Model, loaded: LoadedModel, table: pa.Table) -> pa.Table:
    """``table`` (a training set) with a ``prediction`` column appended; request-time fields are read
    from the spine's columns of the same name."""
    missing = [f.name for f in model.request_fields if f.name not in table.column_names]
    if missing:
        raise RequestError(f"model '{model.name}' takes request field(s) {', '.join(missing)}, which the spine "
                           "does not have", hint=f"give a spine (--spine) with column(s) {', '.join(missing)}")
    columns = {name: table.column(name).to_pylist() for name in model.feature_inputs}
    for f in model.request_fields:
        columns[f.name] = request_values(f, table.column(f.name).to_pylist(), source="spine")
    predictions = loaded.predict(model.inputs, columns) if table.num_rows else []
    return table.append_column(PREDICTION, pa.array(predictions, type=pa.float64()))


# The served-feature log ----------------------------------------------------------------------------


def log_dir(root: Path, model: str) -> Path:
    return root / LOG_DIR / model


def read_log(root: Path, model: str, since: datetime | None = None) -> pl.DataFrame:
    """Every row the server logged for ``model`` (optionally from ``since`` on), oldest first."""
    folder = log_dir(root, model)
    files = sorted(folder.glob("date=*/*.parquet"))
    if since is not None:
        day = as_utc(since).date().isoformat()
        files = [f for f in files if f.parent.name.removeprefix("date=") >= day]
    if not files:
        raise NotFoundError(f"no served features logged for model '{model}'",
                            hint="serve predictions with `fsql serve` first ([server] log_features = true)")
    frame = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    if since is not None:
        frame = frame.filter(pl.col(SERVED_AT) >= as_utc(since))
    return frame.sort(SERVED_AT)


@dataclass
class FeatureSkew:
    feature: str
    compared: int
    differing: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.differing / self.compared if self.compared else 0.0


@dataclass
class SkewReport:
    model: str
    rows: int
    features: list[FeatureSkew]

    @property
    def differing(self) -> int:
        return sum(f.differing for f in self.features)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rows": self.rows, "differing": self.differing,
                "features": [{"feature": f.feature, "compared": f.compared, "differing": f.differing,
                              "share": f.share, "examples": f.examples} for f in self.features]}


def skew_spine(log: pl.DataFrame, training_set: TrainingSet, keys: Sequence[str]) -> pl.DataFrame:
    """The spine that recomputes each logged row: its entity keys at the time it was served."""
    if training_set.timestamp in keys:
        raise RequestError(f"training set '{training_set.name}' uses its timestamp as an entity key")
    return log.select([*keys, pl.col(SERVED_AT).alias(training_set.timestamp)])


def compare(model: Model, log: pl.DataFrame, recomputed: pl.DataFrame, keys: Sequence[str],
            columns: Mapping[str, str], *, examples: int = 5) -> SkewReport:
    """Per feature, how many logged values differ from the point-in-time values (row-aligned frames)."""
    if recomputed.height != log.height:
        raise RequestError("the recomputed training set does not align with the log")
    report = []
    for name in model.feature_inputs:  # request fields were sent, not read: nothing to recompute
        served, offline = log[name].to_list(), recomputed[columns.get(name, name)].to_list()
        differing, found = 0, []
        for i, (a, b) in enumerate(zip(served, offline, strict=True)):
            if not _same(a, b):
                differing += 1
                if len(found) < examples:
                    found.append({**{k: log[k][i] for k in keys}, SERVED_AT: log[SERVED_AT][i].isoformat(),
                                  "served": a, "point_in_time": b,
                                  "status": log[f"{name}{STATUS_SUFFIX}"][i]
                                  if f"{name}{STATUS_SUFFIX}" in log.columns else None})
        report.append(FeatureSkew(name, log.height, differing, found))
    return SkewReport(model.name, log.height, report)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        a, b = float(a), float(b)
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)
