"""Train the example's churn model and export it to ONNX: `churn` training set → scikit-learn → models/churn.onnx.

Run it from the project folder (it builds the project first):

    pip install 'fsql[ml]'          # scikit-learn and skl2onnx, needed for training only
    python examples/train_churn.py

The ONNX graph takes one input per feature, named like the training set's columns, so `fsql build`
can check that the model and the set agree and serving needs neither scikit-learn nor pandas.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

import fsql


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project folder (holds fsql.toml)")
    parser.add_argument("--output", default="models/churn.onnx", help="where to write the model")
    args = parser.parse_args()

    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    with fsql.Store(args.project) as store:
        # The model is not registered yet (its file does not exist): build the features only.
        store.build(skip_models=True)
        definition = store.definition("churn")
        frame = store.training_set("churn")
    spine = {c.name for c in definition.spine_columns}
    features = [c for c in frame.columns if c not in spine]
    text = [c for c in features if frame.schema[c] == pl.String]
    numbers = [c for c in features if c not in text]
    # Missing text is fed to the ONNX graph as "", so train on the same encoding.
    frame = frame.with_columns([pl.col(c).fill_null("") for c in text]
                               + [pl.col(c).cast(pl.Float32) for c in numbers])
    data = frame.select(features).to_pandas()
    label = frame["churned"].cast(pl.Int64).to_numpy()

    pipeline = Pipeline([
        ("prepare", ColumnTransformer([
            ("numbers", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numbers),
            ("text", OneHotEncoder(handle_unknown="ignore"), text),
        ])),
        ("classify", LogisticRegression(max_iter=1000)),
    ])
    pipeline.fit(data, label)
    types = [(c, StringTensorType([None, 1]) if c in text else FloatTensorType([None, 1])) for c in features]
    onnx = to_onnx(pipeline, initial_types=types, options={id(pipeline.steps[-1][1]): {"zipmap": False}},
                   target_opset=17)
    out = Path(args.project) / args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(onnx.SerializeToString())
    print(f"trained on {len(data):,} rows ({', '.join(features)}); accuracy {pipeline.score(data, label):.3f}; "
          f"wrote {out}")


if __name__ == "__main__":
    main()
