"""Task `prices`: forecast the next H log returns, or the realised volatility over
the next H days, from daily price series.

Data: Yahoo-style CSV files (`data`) or yfinance (`tickers`, cached under
`cache_dir`) -> per-step features (log return, log range, log volume change) and
targets -> one calendar split for all series (validation and test start on the
same days; samples whose targets straddle two splits are purged) -> normalisers
fit on the training part. Training: windows of `lookback` steps (full BPTT) or
every series' history in lanes (truncated BPTT), MSE. Test: the model beside the
zero, persistence and training-mean forecasts (and EWMA and HAR for volatility),
with the Diebold-Mariano p-value against the best. Served by
models/price_model.py from raw prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import ROOT, Config, param
from pipeline.tasks import ROWS_PER_CALL, Evaluation, Objective, Task

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

SAMPLE = ROOT / "data" / "prices"


@dataclass
class Params:
    tickers: str = param("", "comma-separated; when set, prices come from yfinance (cached) "
                             "instead of data")
    start: str = param("", "first date (YYYY-MM-DD) to use; empty: from the beginning")
    end: str = param("", "last date to use; empty: to the end")
    interval: str = param("1d", "yfinance bar interval")
    cache_dir: str = param("data/cache", "yfinance cache: one CSV per ticker and interval")
    refresh: bool = param(False, "refetch tickers even when cached")
    repair: str = param("none", "bad CSV rows: none (stop with the file, line and column), "
                                "drop, or ffill (logged either way)", ("none", "drop", "ffill"))
    target: str = param("returns", "returns (the next H log returns) or volatility (realised "
                                   "over the next H)", ("returns", "volatility"))
    horizon: int = param(1, "H, steps ahead")
    lookback: int = param(64, "L, window length for full BPTT and the MLP; the history a "
                              "forecast needs")


@dataclass
class PriceData:
    """Everything training and evaluation read, in raw units per series."""

    names: list[str]
    frames: dict[str, pd.DataFrame]  # the price frames as loaded
    dates: list[np.ndarray]  # [T] day of each step
    x: list[np.ndarray]  # [T, F] features
    y: list[np.ndarray]  # [T, out] targets (NaN at the end)
    split: list[np.ndarray]  # [T]
    features: list[str]
    cutoffs: tuple  # (validation start, test start), pandas Timestamps
    x_norm: object  # data_loaders.sequences.Normaliser
    y_norm: object
    repairs: list[str]
    source: str  # the file or folder read
    origin: str  # how the data got there: the path, or yfinance:TICKERS:INTERVAL

    def streams(self, device="cpu"):
        import torch

        from data_loaders.sequences import Streams

        def t(a):
            return torch.as_tensor(a, device=device)

        return Streams([t(self.x_norm.transform(x)) for x in self.x],
                       [t(self.y_norm.transform(y)) for y in self.y], list(self.split))

    def table(self) -> pd.DataFrame:
        import pandas as pd

        from data_loaders.sequences import SPLIT_NAMES

        rows = []
        for name, dates, split in zip(self.names, self.dates, self.split, strict=True):
            row = {"series": name, "first": str(dates[0])[:10], "last": str(dates[-1])[:10]}
            row.update({k: int((split == v).sum()) for v, k in SPLIT_NAMES.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> str:
        return self.table().to_string(index=False)


def check_splits(names: list[str], split: list[np.ndarray], cutoffs) -> None:
    """Every series shares one calendar, so one that ends early (or starts late) can have
    no validation or test samples: a warning naming it, or an error when a whole split
    is empty."""
    import logging

    from data_loaders.sequences import TEST, VAL

    starts = {VAL: f"validation (from {cutoffs[0].date()})",
              TEST: f"test (from {cutoffs[1].date()})"}
    for which, label in starts.items():
        without = [n for n, s in zip(names, split, strict=True) if not (s == which).any()]
        if len(without) == len(names):
            raise ValueError(f"data: the {label} split is empty for every series; "
                             "change val_frac/test_frac or give more data")
        if without:
            logging.getLogger(__name__).warning(
                "data: no %s samples in %s: their dates do not reach it", label,
                ", ".join(without))


class PricesTask(Task):
    name = "prices"
    sample = SAMPLE  # the bundled data, for empty `data`
    Params = Params
    score_name = "rmse"

    def validate(self, cfg: Config) -> None:
        p = cfg.task
        if p.horizon < 1 or p.lookback < 1:
            raise ValueError(f"horizon and lookback must be >= 1, got horizon={p.horizon}, "
                             f"lookback={p.lookback}")
        if p.tickers and cfg.data.data:
            raise ValueError("data and tickers: give one (a CSV file or folder, or tickers "
                             "for yfinance), not both")
        days = {}
        for name in ("start", "end"):
            try:
                days[name] = date.fromisoformat(getattr(p, name)) if getattr(p, name) else None
            except ValueError:
                raise ValueError(f"{name}: cannot read {getattr(p, name)!r} as a date "
                                 "(YYYY-MM-DD)") from None
        if days["start"] and days["end"] and days["start"] > days["end"]:
            raise ValueError(f"start ({p.start}) is after end ({p.end})")

    def model_name(self, cfg: Config) -> str:
        return f"prices-{cfg.task.target}-h{cfg.task.horizon}"

    def load_series(self, cfg: Config) -> tuple[dict, list[str], str, str]:
        """The price frames named by the config, the repairs made, the path read and
        the data's origin."""
        from data_loaders.prices import download_prices, read_prices

        p = cfg.task
        if p.tickers:
            tickers = [t.strip().upper() for t in p.tickers.split(",") if t.strip()]
            cache = cfg.path(p.cache_dir)
            series, repairs = download_prices(tickers, p.start, p.end, p.interval, cache,
                                              p.refresh, p.repair)
            return series, repairs, str(cache), f"yfinance:{','.join(tickers)}:{p.interval}"
        path = cfg.path(cfg.data.data) if cfg.data.data else self.sample
        series, repairs = read_prices(path, p.repair)
        series = {k: v.loc[p.start or None:p.end or None] for k, v in series.items()}
        return series, repairs, str(path), str(path)

    def prepare(self, cfg: Config) -> PriceData:
        from data_loaders.prices import feature_names, price_features, price_targets
        from data_loaders.sequences import Normaliser, assign_splits, date_cutoffs

        p = cfg.task
        frames, repairs, source, origin = self.load_series(cfg)
        short = {k: len(v) for k, v in frames.items() if len(v) < p.lookback + p.horizon + 2}
        if short:
            window = (f" between start={p.start or '...'} and end={p.end or '...'}"
                      if p.start or p.end else "")
            raise ValueError(f"data: series too short for lookback={p.lookback} and "
                             f"horizon={p.horizon}{window}: {short} rows")
        use_volume = all("volume" in f for f in frames.values())
        names = sorted(frames)
        x = [price_features(frames[n], use_volume) for n in names]
        y = [price_targets(xi[:, 0], p.target, p.horizon) for xi in x]
        dates = [frames[n].index.to_numpy()[1:] for n in names]  # step t is known at day t+1
        cutoffs = date_cutoffs(dates, cfg.data.val_frac, cfg.data.test_frac)
        split = [assign_splits(dt, p.horizon, ~np.isnan(yi).any(1), cutoffs)
                 for dt, yi in zip(dates, y, strict=True)]
        train_x = np.concatenate([xi[s == 0] for xi, s in zip(x, split, strict=True)])
        train_y = np.concatenate([yi[s == 0] for yi, s in zip(y, split, strict=True)])
        if len(train_x) == 0:
            raise ValueError(f"data: no training samples before {cutoffs[0].date()}")
        check_splits(names, split, cutoffs)
        return PriceData(names, frames, dates, x, y, split, feature_names(use_volume), cutoffs,
                         Normaliser().fit(train_x), Normaliser().fit(train_y), repairs,
                         source, origin)

    def log_data(self, cfg: Config, data: PriceData) -> None:
        import mlflow
        import pandas as pd

        from pipeline.tracking import log_dataset

        frame = pd.concat({n: f for n, f in data.frames.items()}, names=["series", "date"])
        log_dataset(frame.reset_index(), data.source, "prices")
        mlflow.set_tags({"data_origin": data.origin, "val_start": str(data.cutoffs[0].date()),
                         "test_start": str(data.cutoffs[1].date()),
                         "features": ",".join(data.features), "series": ",".join(data.names)})
        mlflow.log_table(data.table(), "data/splits.json")
        if data.repairs:
            mlflow.log_text("\n".join(data.repairs), "data/repairs.txt")

    def network(self, cfg: Config, data: PriceData) -> dict:
        from models.price_model import output_names

        m, p = cfg.model, cfg.task
        net = {k: getattr(m, k) for k in ("cell", "hidden", "layers", "dropout", "norm", "init")}
        outputs = output_names(p.target, p.horizon)
        return {"task": self.name, "model": {**net, "lookback": p.lookback},
                "n_in": len(data.features), "n_out": len(outputs), "bptt": cfg.train.bptt,
                "lookback": p.lookback, "target": p.target, "horizon": p.horizon,
                "features": data.features, "outputs": outputs}

    def objective(self, cfg: Config, data: PriceData, net) -> Objective:
        from pipeline.trainer import masked_mse, stream_objective

        device = next(net.parameters()).device
        updates, validate = stream_objective(net, data.streams(device), cfg.train,
                                             cfg.task.lookback)
        return Objective(updates, validate, masked_mse, "MSE (normalised units)")

    def horizon(self, net, cfg: Config, data: PriceData):
        if cfg.model.cell == "mlp":  # no state to measure
            return None
        from pipeline.horizon import validation_horizon

        return validation_horizon(net, data.streams(), cfg.task.lookback)

    def test_forecasts(self, net, cfg: Config, data: PriceData) -> list[dict]:
        """Per series: test anchors, actual targets, the model's and every baseline's
        forecasts."""
        from data_loaders.sequences import TEST, TRAIN
        from models.networks import forecast_at
        from pipeline import metrics

        p = cfg.task
        streams = data.streams()
        returns = [x[:, 0] for x in data.x]
        train_idx = [np.flatnonzero(s == TRAIN) for s in data.split]
        base = metrics.baseline_forecasts(returns, data.y, train_idx, p.target, p.horizon)
        out = []
        for i, a in enumerate(streams.anchors(TEST, p.lookback)):
            if len(a):
                pred = forecast_at(net, streams.x[i], a, cfg.train.bptt == "truncated",
                                   p.lookback)
                out.append({"name": data.names[i], "dates": data.dates[i][a],
                            "actual": data.y[i][a],
                            "model": data.y_norm.inverse_transform(pred.numpy()),
                            "baselines": {k: v[i][a] for k, v in base.items()}})
        if not out:
            raise ValueError("data: the test split has no samples with a full lookback")
        return out

    def evaluate(self, net, cfg: Config, data: PriceData) -> Evaluation:
        from pipeline import metrics, plots

        per_series = self.test_forecasts(net, cfg, data)

        def cat(get):
            return np.concatenate([get(s) for s in per_series])

        actual = cat(lambda s: s["actual"])
        base = {k: cat(lambda s, k=k: s["baselines"][k]) for k in per_series[0]["baselines"]}
        ref = base["persistence"] if cfg.task.target == "volatility" else np.zeros_like(actual)
        table = metrics.compare(cat(lambda s: s["model"]), base, actual, ref, cfg.task.horizon)
        s, best = per_series[0], table["model"]["best_baseline"]
        fig = plots.forecast_vs_actual(s["dates"], s["actual"][:, 0], s["model"][:, 0],
                                       s["baselines"][best][:, 0], best,
                                       f"{s['name']}: test forecast vs actual (first output)")
        return Evaluation(table, {"plots/test_forecast.png": fig})

    def served_model(self) -> type:
        from models.price_model import PriceForecaster

        return PriceForecaster

    def log_model(self, net, cfg: Config, data: PriceData):
        import pandas as pd

        from models.price_model import price_columns, request_row
        from models.served import log_served

        spec = self.network(cfg, data)
        name = data.names[0]  # the input example: a real request, the last L + 1 prices
        tail = data.frames[name].iloc[-(spec["lookback"] + 1):]
        example = pd.DataFrame([request_row(tail, name, price_columns(spec))])
        return log_served(self.served_model(), net, spec,
                          {"x": data.x_norm.to_dict(), "y": data.y_norm.to_dict()}, example)

    def target(self, spec: dict) -> str:
        return f"{spec['target']}-h{spec['horizon']}"

    def validation_scores(self, models: list, cfg: Config, data: PriceData) -> list[float]:
        """RMSE (raw units) of each model at the validation anchors that all of them can
        forecast (each needs its own lookback of history), from raw prices."""
        from data_loaders.sequences import VAL

        val = {n: np.flatnonzero(s == VAL) for n, s in zip(data.names, data.split, strict=True)}
        val = {n: a for n, a in val.items() if len(a)}
        forecasts = [self._rolling(m, data, val) for m in models]
        errors = [[] for _ in models]
        for name, anchors in val.items():
            common = anchors
            for f in forecasts:
                common = np.intersect1d(common, f[name][0])
            actual = data.y[data.names.index(name)][common]
            for err, (steps, values) in zip(errors, (f[name] for f in forecasts), strict=True):
                err.append(values[np.searchsorted(steps, common)] - actual)
        if not sum(len(e) for e in errors[0]):
            raise ValueError("data: no validation sample that every model can forecast (the "
                             "validation split is shorter than the longest lookback)")
        return [float(np.sqrt(np.mean(np.concatenate(e) ** 2))) for e in errors]

    def _rolling(self, model, data: PriceData, anchors: dict) -> dict:
        """{series: (anchors, forecasts [N, out])}: a served model's rolling forecasts up
        to each series' last anchor, from the prices."""
        import pandas as pd

        from models.price_model import price_columns, request_row

        columns, out = price_columns(model.spec), {}
        names = list(anchors)
        for i in range(0, len(names), ROWS_PER_CALL):
            chunk = names[i:i + ROWS_PER_CALL]
            rows = [request_row(data.frames[n].iloc[: anchors[n][-1] + 2], n, columns)
                    for n in chunk]
            got = model.predict(None, pd.DataFrame(rows), {"mode": "rolling"})
            for n, part in got.groupby("series_id", sort=False):
                out[n] = (part["step"].to_numpy() - 1, part[model.spec["outputs"]].to_numpy())
        return out

    def requests(self, path: Path, spec: dict, repair: str) -> pd.DataFrame:
        import pandas as pd

        from data_loaders.prices import read_prices
        from models.price_model import price_columns, request_row

        series, _ = read_prices(path, repair, what="input")
        return pd.DataFrame([request_row(f, n, price_columns(spec)) for n, f in series.items()])


TASK = PricesTask()
