"""Model files behind `[models.NAME]`: load an ONNX, scikit-learn or Python model and score columns.

Every kind is called the same way: ``predict(columns)`` takes one list per input column (the
training-set feature columns, then any request-time fields, in the order recorded at build) and returns
one float per row. Online serving and batch scoring both go through here, so they feed a model
identically.

- ``onnx`` (onnxruntime): either one input per feature, named like the feature (a tensor ``[N, 1]`` of
  float, int64 or string), or a single float input ``[N, k]`` taking the k features in order.
- ``sklearn`` (joblib): the file is unpickled, which runs code: load trusted files only.
- ``python``: ``module:function`` importable from the project folder, called with ``dict[str, list]``;
  it may declare ``function.inputs = ("feature", ...)`` to have build check them.

The prediction is the positive class's probability when the model gives probabilities, else its output.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from fsql.config import CONFIG_FILE, REQUEST_TYPES
from fsql.definitions import Model, RequestField
from fsql.errors import ConfigError, InternalError, RequestError
from fsql.extras import require_extra

Columns = Mapping[str, Sequence[Any]]
PREDICTION = "prediction"  # the column (batch) and key (online) a model's output goes in


@dataclass
class LoadedModel:
    """A model ready to score: ``expected`` is the inputs it declares (names), None when it does not
    say; ``width`` the number of columns it takes when known."""

    name: str
    kind: str
    expected: tuple[str, ...] | None
    width: int | None
    score: Callable[[list[str], Columns], list[float]]

    def predict(self, inputs: Sequence[str], columns: Columns) -> list[float]:
        """Predictions for the rows of ``columns``, fed in the order ``inputs``."""
        try:
            return self.score(list(inputs), columns)
        except RequestError:
            raise
        except Exception as e:  # a model library's own error: report it as the model's, in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InternalError(f"model '{self.name}' failed: {first}",
                                hint="check that the model file matches its training set") from e


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_file(model: Model, root: Path, line: int | None = None) -> Path:
    assert model.path is not None
    path = Path(model.path) if Path(model.path).is_absolute() else root / model.path
    if not path.is_file():
        hint = ("train it first (for the example: python examples/train_churn.py)"
                if model.kind == "onnx" else "check [models] path in fsql.toml")
        raise ConfigError(f"model '{model.name}': file {model.path} does not exist", path=CONFIG_FILE, line=line,
                          hint=hint)
    return path


def load_model(model: Model, root: Path, *, line: int | None = None) -> LoadedModel:
    """Load ``model`` from the project at ``root``; a missing or unreadable file is a ConfigError."""
    if model.kind == "python":
        return _python(model, root, line)
    path = model_file(model, root, line)
    try:
        return _onnx(model, path) if model.kind == "onnx" else _sklearn(model, path)
    except (ConfigError, RequestError):
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model '{model.name}': cannot load {model.path}: {first}", path=CONFIG_FILE,
                          line=line, hint=f"is it a {model.kind} model file?") from None


def bind_inputs(loaded: LoadedModel, features: Sequence[str], *, request: Sequence[str] = (),
                line: int | None = None) -> tuple[str, ...]:
    """The column order to feed ``loaded`` from a training set's ``features`` and the model's ``request``
    fields (after the features unless the model names its order); a build calls this so a model whose
    inputs do not match fails the build, not the first request."""
    features = [*features, *request]
    def fail(message: str, hint: str) -> ConfigError:
        return ConfigError(f"model '{loaded.name}': {message}", path=CONFIG_FILE, line=line, hint=hint)

    if loaded.expected is not None:
        unknown = [n for n in loaded.expected if n not in features]
        absent = [n for n in features if n not in loaded.expected]
        if unknown or absent:
            parts = []
            if unknown:
                parts.append(f"expects input(s) {', '.join(unknown)} the training set does not have"
                             + (" (nor its request_fields)" if request else ""))
            if [n for n in absent if n not in request]:
                parts.append(f"does not take feature(s) {', '.join(n for n in absent if n not in request)} "
                             "of the training set")
            if [n for n in absent if n in request]:
                parts.append(f"does not take request field(s) {', '.join(n for n in absent if n in request)}")
            raise fail("; ".join(parts), "retrain the model on the training set's features, in its order")
        return tuple(loaded.expected)
    if loaded.width is not None and loaded.width != len(features):
        raise fail(f"takes {loaded.width} input columns but the training set has {len(features)} features "
                   f"({', '.join(features)})", "retrain the model on the training set's features")
    return tuple(features)


def request_values(field: RequestField, values: Sequence[Any], *, source: str = "request") -> list[Any]:
    """``values`` of a request-time field checked against its declared type and brought to one Python
    type (an integer sent for a DOUBLE becomes a float), so a request and a spine feed a model alike.
    None passes through as a missing value. A wrong value is a RequestError naming the field."""
    family = REQUEST_TYPES[field.dtype]
    out: list[Any] = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        number = isinstance(value, int | float | Decimal) and not isinstance(value, bool)
        if family == "float" and number and math.isfinite(float(value)):
            out.append(float(value))
        elif family == "integer" and number and float(value).is_integer():
            out.append(int(value))
        elif (family == "string" and isinstance(value, str)) or (family == "boolean" and isinstance(value, bool)):
            out.append(value)
        else:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise RequestError(f"request field '{field.name}' is {field.dtype}, but value {i + 1} of the {source} "
                               f"is {shown}", hint=f"send a {field.dtype} (or null) for '{field.name}'")
    return out


# Kinds ---------------------------------------------------------------------------------------------


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _output(values: Any) -> list[float]:
    array = np.asarray(values)
    if array.ndim == 2:
        array = array[:, -1]  # probabilities: the positive (last) class
    return [float(v) for v in array.reshape(-1)]


def _onnx(model: Model, path: Path) -> LoadedModel:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One scoring thread per call: the server already overlaps calls, and two cores are shared.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    outputs = [o.name for o in session.get_outputs()]
    wanted = "probabilities" if "probabilities" in outputs else outputs[0]
    if len(inputs) == 1 and inputs[0].shape and isinstance(inputs[0].shape[-1], int) and inputs[0].shape[-1] > 1:
        only = inputs[0]
        dtype = np.float64 if only.type == "tensor(double)" else np.float32

        def matrix(order: list[str], columns: Columns) -> list[float]:
            data = np.column_stack([_floats(columns[n]) for n in order]).astype(dtype)
            return _output(session.run([wanted], {only.name: data})[0])

        return LoadedModel(model.name, "onnx", None, int(only.shape[-1]), matrix)
    types = {i.name: i.type for i in inputs}

    def tensor(name: str, values: Sequence[Any]) -> np.ndarray:
        kind = types[name]
        if kind == "tensor(string)":
            return np.array(["" if v is None else str(v) for v in values], dtype=object).reshape(-1, 1)
        if kind == "tensor(int64)":
            return np.array([0 if v is None else int(v) for v in values], dtype=np.int64).reshape(-1, 1)
        dtype = np.float64 if kind == "tensor(double)" else np.float32
        return _floats(values).astype(dtype).reshape(-1, 1)

    def named(order: list[str], columns: Columns) -> list[float]:
        return _output(session.run([wanted], {n: tensor(n, columns[n]) for n in order})[0])

    return LoadedModel(model.name, "onnx", tuple(types), len(types), named)


def _sklearn(model: Model, path: Path) -> LoadedModel:
    joblib = require_extra("joblib", "ml")
    estimator = joblib.load(path)  # unpickling runs code: documented as trusted files only
    names = getattr(estimator, "feature_names_in_", None)
    expected = tuple(str(n) for n in names) if names is not None else None
    width = getattr(estimator, "n_features_in_", None)
    method = estimator.predict_proba if hasattr(estimator, "predict_proba") else estimator.predict

    def score(order: list[str], columns: Columns) -> list[float]:
        if expected is not None:
            pd = require_extra("pandas", "ml")
            frame = pd.DataFrame({n: list(columns[n]) for n in order})
            return _output(method(frame))
        return _output(method(np.column_stack([_floats(columns[n]) for n in order])))

    return LoadedModel(model.name, "sklearn", expected, width, score)


def _python(model: Model, root: Path, line: int | None) -> LoadedModel:
    module_name, _, attr = (model.entry_point or "").partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model '{model.name}': entry_point must be module:function", path=CONFIG_FILE, line=line)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the project's own modules, like feature files, live in its folder
    own = root / Path(*module_name.split("."))
    if own.with_suffix(".py").is_file() or (own / "__init__.py").is_file():
        cached = sys.modules.get(module_name)
        if cached is not None and not Path(getattr(cached, "__file__", None) or "/").resolve().is_relative_to(
                root.resolve()):
            # The same module name imported from another project of this process: load this project's.
            del sys.modules[module_name]
            sys.path.remove(str(root))
            sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
        if Path(getattr(module, "__file__", None) or "/").resolve().is_relative_to(root.resolve()):
            module = importlib.reload(module)  # the project's own code may have changed since (a rebuild)
        function = getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model '{model.name}': cannot import {model.entry_point}: {e}", path=CONFIG_FILE,
                          line=line, hint="the module must be importable from the project folder") from None
    declared = getattr(function, "inputs", None)
    expected = tuple(declared) if declared is not None else None

    def score(order: list[str], columns: Columns) -> list[float]:
        return [float(v) for v in function({n: list(columns[n]) for n in order})]

    return LoadedModel(model.name, "python", expected, len(expected) if expected else None, score)
