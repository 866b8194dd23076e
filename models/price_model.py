"""The MLflow pyfunc that serves a price model from raw price histories.

Stored as models/served.py stores every model; the class comes from code
(`price_entry.py`). The model computes features, windows and normalisation itself
with the same functions training used, so a client sends prices, never features.

Request: one row per series. Array columns `close` (the adjusted close), `high`,
`low` and, when the model was trained with volume, `volume`; optional
`series_id` (string) and `dates` (array of strings, one per price).
Params: `mode` = `last` (the forecast after the last price, default) or
`rolling` (a forecast at every price that has a full lookback behind it).
Response: one row per forecast: `series_id`, `step` (index of the price the
forecast is made at), `date` (`dates[step]`, empty when no dates were sent) and
the forecast columns (`return_h1..hH`, or `volatility_hH`).
Limits: at most MAX_ROWS series and MAX_PRICES prices per request.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from data_loaders.prices import price_features
from data_loaders.sequences import Normaliser
from models.networks import forecast_at
from models.served import ServedModel, bad, missing

MODES = ("last", "rolling")
MAX_ROWS = 1_000
MAX_PRICES = 1_000_000


def output_names(target: str, horizon: int) -> list[str]:
    if target == "volatility":
        return [f"volatility_h{horizon}"]
    return [f"return_h{h}" for h in range(1, horizon + 1)]


def price_columns(spec: dict) -> list[str]:
    return ["close", "high", "low"] + (["volume"] if "log_volume_change" in spec["features"]
                                       else [])


def request_row(frame: pd.DataFrame, series_id: str, columns: list[str]) -> dict:
    """The request row for a price frame (as the loaders return it): what a client sends."""
    source = {"close": "adj_close", "high": "high", "low": "low", "volume": "volume"}
    row = {c: frame[source[c]].astype(float).tolist() for c in columns}
    row["dates"] = [str(d)[:10] for d in frame.index]
    row["series_id"] = str(series_id)
    return row


def _array(row: dict, name: str, i: int) -> np.ndarray:
    values = row.get(name)
    if missing(values):
        raise bad(f"row {i}: missing required column '{name}'")
    if isinstance(values, str | bytes) or np.ndim(values) != 1:
        raise bad(f"row {i}, column '{name}': expected an array of numbers, "
                  f"got {type(values).__name__}")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise bad(f"row {i}, column '{name}': expected an array of numbers") from None
    nonfinite = np.flatnonzero(~np.isfinite(arr))
    if len(nonfinite):
        raise bad(f"row {i}, column '{name}': NaN or infinity at position {nonfinite[0]}")
    low = np.flatnonzero(arr < 0) if name == "volume" else np.flatnonzero(arr <= 0)
    if len(low):
        rule = "must be >= 0" if name == "volume" else "must be > 0"
        raise bad(f"row {i}, column '{name}': {rule}, "
                  f"got {float(arr[low[0]])} at position {low[0]}")
    return arr


class PriceForecaster(ServedModel):
    entry = "price_entry.py"
    unit = "series"
    max_rows = MAX_ROWS

    @staticmethod
    def signature(spec: dict) -> ModelSignature:
        inputs = [ColSpec(Array(DataType.double), c) for c in price_columns(spec)]
        inputs += [ColSpec(DataType.string, "series_id", required=False),
                   ColSpec(Array(DataType.string), "dates", required=False)]
        outputs = [ColSpec(DataType.string, "series_id"), ColSpec(DataType.long, "step"),
                   ColSpec(DataType.string, "date")]
        outputs += [ColSpec(DataType.double, c) for c in spec["outputs"]]
        params = ParamSchema([ParamSpec("mode", DataType.string, "last")])
        return ModelSignature(Schema(inputs), Schema(outputs), params)

    def setup(self) -> None:
        self.x_norm = Normaliser.from_dict(self.normaliser["x"])
        self.y_norm = Normaliser.from_dict(self.normaliser["y"])

    def _prices(self, row: dict, i: int) -> dict[str, np.ndarray]:
        cols = {name: _array(row, name, i) for name in price_columns(self.spec)}
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise bad(f"row {i}: price arrays differ in length: {lengths}")
        need = self.spec["lookback"] + 1
        if lengths["close"] < need:
            raise bad(f"row {i}, column 'close': {lengths['close']} prices is shorter than "
                      f"the {need} this model needs (lookback {self.spec['lookback']} + 1)")
        return cols

    def _forecast(self, row: dict, i: int, mode: str) -> dict:
        """The forecasts for one request row, as columns."""
        prices = self._prices(row, i)
        prices["adj_close"] = prices.pop("close")
        x = torch.as_tensor(self.x_norm.transform(price_features(prices, "volume" in prices)))
        lookback = self.spec["lookback"]
        anchors = np.arange(lookback - 1 if mode == "rolling" else len(x) - 1, len(x))
        with torch.no_grad():
            pred = forecast_at(self.net, x, anchors, self.spec["bptt"] == "truncated", lookback)
        values = self.y_norm.inverse_transform(pred.numpy()).astype(np.float64)
        if not np.isfinite(values).all():
            raise bad(f"row {i}: the model produced a non-finite forecast")
        steps = anchors + 1  # feature step t is known at price t+1
        dates = row.get("dates")
        if dates is not None and not np.isscalar(dates):
            if len(dates) != len(prices["adj_close"]):
                raise bad(f"row {i}, column 'dates': {len(dates)} dates for "
                          f"{len(prices['adj_close'])} prices")
            date = np.asarray(dates, dtype=str)[steps]
        else:
            date = np.full(len(steps), "")
        sid = str(i) if missing(row.get("series_id")) else str(row["series_id"])
        return {"series_id": np.full(len(steps), sid, dtype=object), "step": steps,
                "date": date, "values": values}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        mode = (params or {}).get("mode") or "last"
        if mode not in MODES:
            raise bad(f"params.mode must be one of {list(MODES)}, got {mode!r}")
        rows = self.rows(model_input)
        total = sum(np.size(r.get("close")) for r in rows if r.get("close") is not None)
        if total > MAX_PRICES:
            raise bad(f"request has {total} prices in 'close'; the limit is {MAX_PRICES}")
        parts = [self._forecast(r, i, mode) for i, r in enumerate(rows)]
        out = {k: np.concatenate([p[k] for p in parts]) for k in ("series_id", "step", "date")}
        values = np.concatenate([p["values"] for p in parts])
        out.update({name: values[:, j] for j, name in enumerate(self.spec["outputs"])})
        return pd.DataFrame(out)
