"""The MLflow pyfunc that serves a price model from raw price histories.

Stored as plain files, no pickled torch module: `weights.pt` (a state_dict,
loaded with weights_only=True), `model.json` (the network and data settings)
and `normaliser.json`. The model computes features, windows and normalisation
itself with the same functions training used, so a client sends prices.

Input: one row per series; array columns `close` (adjusted close), `high`,
`low` and, when the model was trained with volume, `volume`; an optional
`series_id`. Output: one row per series: `series_id`, `step` (index of the last
price), and the forecast columns named in `model.json` (`outputs`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from data_loaders.prices import price_features
from data_loaders.sequences import Normaliser
from models.networks import build_model, forecast_at

PACKAGES = ("models", "data_loaders")  # shipped with the model as code_paths


def output_names(target: str, horizon: int) -> list[str]:
    if target == "volatility":
        return [f"volatility_h{horizon}"]
    return [f"return_h{h}" for h in range(1, horizon + 1)]


def required_columns(spec: dict) -> list[str]:
    return ["close", "high", "low"] + (["volume"] if "log_volume_change" in spec["features"]
                                       else [])


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class PriceForecaster(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.load(context.artifacts)

    def load(self, artifacts: dict) -> PriceForecaster:
        self.spec = json.loads(Path(artifacts["config"]).read_text())
        norm = json.loads(Path(artifacts["normaliser"]).read_text())
        self.x_norm = Normaliser.from_dict(norm["x"])
        self.y_norm = Normaliser.from_dict(norm["y"])
        self.net = build_model(self.spec["model"], len(self.spec["features"]),
                               len(self.spec["outputs"]))
        self.net.load_state_dict(torch.load(artifacts["weights"], map_location="cpu",
                                            weights_only=True))
        self.net.eval()
        return self

    def _features(self, row: pd.Series, i: int) -> np.ndarray:
        """Validated price arrays of one row -> normalised features [T-1, F]."""
        cols = {}
        for name in required_columns(self.spec):
            values = row.get(name)
            if values is None or (np.isscalar(values) and pd.isna(values)):
                raise _bad(f"row {i}: missing required column '{name}'")
            try:
                cols[name] = np.asarray(values, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise _bad(f"row {i}, column '{name}': expected an array of numbers") from None
            arr = cols[name]
            if not np.isfinite(arr).all():
                raise _bad(f"row {i}, column '{name}': contains NaN or infinity at position "
                           f"{int(np.flatnonzero(~np.isfinite(arr))[0])}")
            if name != "volume" and (arr <= 0).any():
                raise _bad(f"row {i}, column '{name}': prices must be > 0, got "
                           f"{arr[arr <= 0][0]!r}")
            if name == "volume" and (arr < 0).any():
                raise _bad(f"row {i}, column 'volume': must be >= 0")
        need = self.spec["lookback"] + 1
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise _bad(f"row {i}: price arrays differ in length: {lengths}")
        if lengths["close"] < need:
            raise _bad(f"row {i}, column 'close': history of {lengths['close']} prices is "
                       f"shorter than the {need} this model needs (lookback "
                       f"{self.spec['lookback']} + 1)")
        frame = pd.DataFrame({"adj_close": cols["close"], "high": cols["high"],
                              "low": cols["low"], **({"volume": cols["volume"]}
                                                     if "volume" in cols else {})})
        return self.x_norm.transform(price_features(frame, "volume" in cols))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if len(model_input) == 0:
            raise _bad("empty batch: send at least one row (one series)")
        stateful = self.spec["bptt"] == "truncated"
        rows = []
        for i, (_, row) in enumerate(model_input.iterrows()):
            x = torch.as_tensor(self._features(row, i))
            last = np.array([len(x) - 1])
            with torch.no_grad():
                pred = forecast_at(self.net, x, last, stateful, self.spec["lookback"])
            values = self.y_norm.inverse_transform(pred.numpy())[0]
            if not np.isfinite(values).all():
                raise _bad(f"row {i}: the model produced a non-finite forecast")
            sid = row.get("series_id")
            rows.append([str(i) if sid is None or pd.isna(sid) else str(sid), len(x), *values])
        return pd.DataFrame(rows, columns=["series_id", "step", *self.spec["outputs"]])


def signature(spec: dict) -> ModelSignature:
    inputs = [ColSpec(Array(DataType.double), c) for c in required_columns(spec)]
    inputs.append(ColSpec(DataType.string, "series_id", required=False))
    outputs = [ColSpec(DataType.string, "series_id"), ColSpec(DataType.long, "step")]
    outputs += [ColSpec(DataType.double, c) for c in spec["outputs"]]
    return ModelSignature(Schema(inputs), Schema(outputs))


def save_artifacts(folder: Path, net: torch.nn.Module, spec: dict, x_norm: Normaliser,
                   y_norm: Normaliser) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"weights": folder / "weights.pt", "config": folder / "model.json",
             "normaliser": folder / "normaliser.json"}
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, paths["weights"])
    paths["config"].write_text(json.dumps(spec, indent=2))
    paths["normaliser"].write_text(json.dumps({"x": x_norm.to_dict(), "y": y_norm.to_dict()}))
    return {k: str(v) for k, v in paths.items()}


def log_price_model(folder: Path, net, spec: dict, x_norm, y_norm, example: pd.DataFrame):
    """Log the pyfunc into the active run; returns MLflow's ModelInfo."""
    root = Path(__file__).resolve().parents[1]
    artifacts = save_artifacts(folder, net, spec, x_norm, y_norm)
    with warnings.catch_warnings():  # `step` is a count, never missing: an int column is right
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts=artifacts, code_paths=[str(root / p) for p in PACKAGES],
            signature=signature(spec), input_example=example, pip_requirements=_requirements())


def _requirements() -> list[str]:
    """The serving dependencies, pinned as in pyproject.toml."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if d.split("==")[0] not in ("yfinance", "librosa", "matplotlib",
                                                         "tqdm")]
