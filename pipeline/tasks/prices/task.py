"""Task `prices`: forecast the next H log returns, or the realised volatility over
the next H days, from daily price series: a point forecast (loss=mse) or a
distribution (loss=gaussian or quantile: models/heads.py).

Data: Yahoo-style CSV files (`data`) or yfinance (`tickers`, cached under
`cache_dir`) -> per-step features (log return, log range, log volume change) and
targets -> one calendar split for all series (validation and test start on the
same days, or a walk-forward fold's blocks with folds=K; samples whose targets
straddle two splits are purged) -> normalisers fit on the training part. Training:
windows of `lookback` steps (full BPTT) or every series' history in lanes (truncated
BPTT). Test (pipeline/tasks/prices/evaluation.py): the model beside the naive forecasts, EWMA,
HAR, GARCH(1,1) and historical simulation, with Diebold-Mariano p-values, quantile
and value-at-risk scores; a walk-forward parent pools its folds' test forecasts.
Served by models/price_model.py from raw prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.params import ROOT, Config, param
from pipeline.tasks import Evaluation, Objective, Task, in_calls

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

SAMPLE = ROOT / "data" / "prices"
LOSSES = ("mse", "gaussian", "quantile")  # what the outputs mean: models/heads.py
MIN_BLOCK_DAYS = 20  # a walk-forward block's test days, at least (a trading month)


@dataclass
class Params:
    tickers: str = param("", "comma-separated; when set, prices come from yfinance (cached) "
                             "instead of data")
    start: str = param("", "first date (YYYY-MM-DD) to use; empty: from the beginning")
    end: str = param("", "last date to use; empty: to the end")
    val_start: str = param("", "first day of validation (YYYY-MM-DD), with test_start: a "
                               "calendar split instead of val_frac and test_frac")
    test_start: str = param("", "first day of the test period (YYYY-MM-DD), with val_start")
    interval: str = param("1d", "yfinance bar interval")
    cache_dir: str = param("data/cache", "yfinance cache: one CSV per ticker and interval")
    refresh: bool = param(False, "refetch tickers even when cached")
    repair: str = param("none", "bad CSV rows: none (stop with the file, line and column), "
                                "drop, or ffill (logged either way)", ("none", "drop", "ffill"))
    skip_bad: bool = param(False, "leave bad or too short series out (counted and listed in "
                                  "the run) instead of stopping")
    target: str = param("returns", "returns (the next H log returns) or volatility (realised "
                                   "over the next H)", ("returns", "volatility"))
    horizon: int = param(1, "H, steps ahead")
    lookback: int = param(64, "L, window length for full BPTT and the MLP; the history a "
                              "forecast needs")
    loss: str = param("mse", "mse (a point forecast), gaussian (mean and scale, by negative "
                             "log-likelihood) or quantile (pinball loss at quantiles)", LOSSES)
    quantiles: str = param("0.01,0.05,0.5,0.95,0.99", "gaussian and quantile: the quantiles "
                           "served and scored (quantile needs 0.5, the point forecast)")
    select: str = param("loss", "the validation score that picks the best epoch and stops "
                                "early: loss (the training loss) or qlike (volatility with "
                                "loss=gaussian: QLIKE of the forecast variance, as the test "
                                "ranks)", ("loss", "qlike"))
    calibrate: bool = param(False, "gaussian: each quantile from the validation residuals "
                                   "(split conformal) instead of the normal's; carried with "
                                   "the model")
    split: str = param("calendar", "calendar (every series cut on the same days) or ticker "
                                   "(with folds=K: K-fold cross-validation over the series, "
                                   "each fold tested on series it never trained on)",
                       ("calendar", "ticker"))
    folds: int = param(1, "K > 1: with split=calendar a walk-forward backtest, one child run "
                          "per block trained on all that precedes it: the test part of the "
                          "calendar in K blocks, or with val_start/test_start K calendar "
                          "years from test_start, each validated on the span before it as "
                          "long as val_start..test_start; with split=ticker the series in K "
                          "groups, one child run each, trained on the others")
    fold: int = param(0, "with folds=K: run only fold k (1..K); 0 runs them all")
    scale_free: bool = param(False, "inputs and targets relative to each series' own trailing "
                                    "(EWMA) volatility: one model for quiet and wild series")
    market: str = param("", "a market table (CSV: date, market_vol_ratio, market_shock, "
                            "market_move; python -m data_loaders.market): each day's "
                            "market-wide inputs beside each series' own; the served model "
                            "then takes them per price")
    aci: float = param(0.0, "gamma > 0: the test also scores the model's intervals adapted "
                            "online per series (adaptive conformal inference, row model_aci): "
                            "the miss rate steers the level as each outcome comes in")


@dataclass
class PriceData:
    """Everything training and evaluation read, in raw units per series."""

    names: list[str]
    frames: dict[str, pd.DataFrame]  # the price frames as loaded
    dates: list[np.ndarray]  # [T] day of each step
    x: list[np.ndarray]  # [T, F] features
    y: list[np.ndarray]  # [T, out] targets (NaN at the end), in the series' units
    returns: list[np.ndarray]  # [T] log returns
    scale: list[np.ndarray]  # [T] what the model's targets are divided by (scale_free; or 1)
    split: list[np.ndarray]  # [T] what the model trains, validates and is tested on
    calendar: list[np.ndarray]  # [T] the split by day alone: the baselines fit on its train
    features: list[str]
    cutoffs: tuple  # (validation start, test start, test end or None), pandas Timestamps
    x_norm: object  # data_loaders.sequences.Normaliser
    y_norm: object
    repairs: list[str]
    bad: list[tuple[str, str]]  # series left out (skip_bad) and why
    source: str  # the file or folder read
    origin: str  # how the data got there: the path, or yfinance:TICKERS:INTERVAL
    market: pd.DataFrame | None = None  # the market table read (`market`), or None

    def streams(self, device="cpu"):
        import torch

        from data_loaders.sequences import Streams

        def t(a):
            return torch.as_tensor(a, device=device)

        return Streams([t(self.x_norm.transform(x)) for x in self.x],
                       [t(self.y_norm.transform(y)) for y in self.model_y()], list(self.split))

    def model_y(self) -> list[np.ndarray]:
        """The targets the model learns, before normalisation."""
        return [y / s[:, None] for y, s in zip(self.y, self.scale, strict=True)]

    def table(self) -> pd.DataFrame:
        import pandas as pd

        from data_loaders.sequences import SPLIT_NAMES

        rows = []
        for name, dates, split in zip(self.names, self.dates, self.split, strict=True):
            row = {"series": name, "first": str(dates[0])[:10], "last": str(dates[-1])[:10]}
            row.update({k: int((split == v).sum()) for v, k in SPLIT_NAMES.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self, shown: int = 12) -> str:
        """The split of each series; of many, the first `shown` and a count (the whole
        table is logged: data/splits.json)."""
        table = self.table()
        text = table.head(shown).to_string(index=False)
        more = len(table) - shown
        left = f"\n... and {more} more series (data/splits.json)" if more > 0 else ""
        bad = f"\n{len(self.bad)} bad series left out (data/bad_series.txt)" if self.bad else ""
        return text + left + bad


def _suffix(loss: str) -> str:
    """A distributional model's names carry its loss: its responses have more columns."""
    return "" if loss == "mse" else f"-{loss}"


def check_splits(names: list[str], split: list[np.ndarray], cutoffs) -> None:
    """Every series shares one calendar, so one that ends early (or starts late) can have
    no validation or test samples: a warning naming it, or an error when a whole split
    is empty."""
    import logging

    from data_loaders.sequences import TEST, VAL

    starts = {VAL: f"validation (from {cutoffs[0].date()})",
              TEST: f"test (from {cutoffs[1].date()})"}
    if cutoffs[0] == cutoffs[1]:  # scoring only (`prepare(..., scored_from)`): no validation
        del starts[VAL]
    for which, label in starts.items():
        without = [n for n, s in zip(names, split, strict=True) if not (s == which).any()]
        if len(without) == len(names):
            raise ValueError(f"data: the {label} split is empty for every series; "
                             "change val_frac/test_frac (or val_start/test_start) or give "
                             "more data")
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
        for name in ("start", "end", "val_start", "test_start"):
            try:
                days[name] = date.fromisoformat(getattr(p, name)) if getattr(p, name) else None
            except ValueError:
                raise ValueError(f"{name}: cannot read {getattr(p, name)!r} as a date "
                                 "(YYYY-MM-DD)") from None
        if days["start"] and days["end"] and days["start"] > days["end"]:
            raise ValueError(f"start ({p.start}) is after end ({p.end})")
        if bool(p.val_start) != bool(p.test_start):
            raise ValueError("val_start and test_start: give both (a calendar split) or "
                             f"neither (val_frac and test_frac), got val_start={p.val_start!r}, "
                             f"test_start={p.test_start!r}")
        if p.val_start and days["val_start"] >= days["test_start"]:
            raise ValueError(f"val_start ({p.val_start}) must be before test_start "
                             f"({p.test_start})")
        if p.split == "ticker" and p.folds < 2:
            raise ValueError(f"split=ticker needs folds >= 2 (the groups of series held out "
                             f"in turn), got folds={p.folds}")
        if not 0 <= p.aci < 1:
            raise ValueError(f"aci: the step gamma of adaptive conformal inference must be in "
                             f"[0, 1) (0: off; 0.005 is usual), got {p.aci}")
        from models.heads import parse_quantiles
        from pipeline.tasks.prices.risk import central_pairs

        qs = parse_quantiles(p.quantiles)  # whatever the loss: gaussian serves them too
        if p.select == "qlike" and (p.loss, p.target) != ("gaussian", "volatility"):
            raise ValueError(f"select=qlike scores a forecast variance: it needs "
                             f"target=volatility and loss=gaussian, got target={p.target}, "
                             f"loss={p.loss}")
        if p.calibrate and p.loss != "gaussian":
            raise ValueError(f"calibrate: sets a gaussian model's quantiles from validation "
                             f"(loss=gaussian); loss={p.loss} learns its own")
        if p.loss == "quantile" and 0.5 not in qs:
            raise ValueError(f"quantiles: loss=quantile needs 0.5 (the point forecast), got "
                             f"{p.quantiles!r}")
        if p.folds < 1 or not 0 <= p.fold <= p.folds:
            raise ValueError(f"folds must be >= 1 and fold in 0..folds, got folds={p.folds}, "
                             f"fold={p.fold}")
        if p.fold and p.folds == 1:
            raise ValueError(f"fold: runs one fold k of folds=K (K >= 2); got fold={p.fold} "
                             "with folds=1")
        if p.aci and (p.loss == "mse" or not central_pairs(qs)):
            raise ValueError(f"aci: adapts the model's central intervals (a pair of quantiles "
                             f"tau, 1-tau, with loss=gaussian or quantile); loss={p.loss}, "
                             f"quantiles={p.quantiles!r} have none; or aci=0")

    def model_name(self, cfg: Config) -> str:
        # a model that reads the market takes other inputs: a name of its own (registry.py)
        return (f"prices-{cfg.task.target}-h{cfg.task.horizon}{_suffix(cfg.task.loss)}"
                + ("-market" if cfg.task.market else ""))

    def run_name(self, cfg: Config) -> str:
        return f"{cfg.model.cell}-{cfg.train.bptt}{_suffix(cfg.task.loss)}"

    def folds(self, cfg: Config) -> list[tuple[str, dict]]:
        """folds=K (and fold=0): one walk-forward block, or one group of held-out series,
        per child run, checked before any runs."""
        p = cfg.task
        if p.folds == 1 or p.fold:
            return []
        check_folds(cfg, self.load_series(cfg)[0])
        return [(f"fold={k}", {"fold": k}) for k in range(1, p.folds + 1)]

    def serves(self, cfg: Config) -> bool:
        return not cfg.task.fold  # a fold's model knows part of the data only

    def load_series(self, cfg: Config) -> tuple[dict, list[str], list, str, str]:
        """The price frames named by the config, the repairs made, the bad series left
        out, the path read and the data's origin."""
        from data_loaders.prices import cached_prices, download_prices

        p = cfg.task
        if p.tickers:
            tickers = [t.strip().upper() for t in p.tickers.split(",") if t.strip()]
            cache = cfg.path(p.cache_dir)
            series, repairs = download_prices(tickers, p.start, p.end, p.interval, cache,
                                              p.refresh, p.repair)
            return (series, repairs, [], str(cache),
                    f"yfinance:{','.join(tickers)}:{p.interval}")
        path = cfg.path(cfg.data.data) if cfg.data.data else self.sample
        series, repairs, bad = cached_prices(path, p.repair, p.skip_bad, cfg.path(p.cache_dir))
        series = {k: v.loc[p.start or None:p.end or None] for k, v in series.items()}
        return series, repairs, bad, str(path), str(path)

    def prepare(self, cfg: Config, scored_from: str = "") -> PriceData:
        """The data a run trains on; with `scored_from` (a date), data to score a trained
        model on: the days before it are each series' history (the baselines fit on it),
        the test period starts on it, and there is no validation."""
        from data_loaders.market import MARKET_FEATURES, market_at, read_market
        from data_loaders.prices import feature_names, price_features, price_targets, scale_free
        from data_loaders.sequences import TEST, UNUSED, Normaliser, assign_splits

        p = cfg.task
        frames, repairs, bad, source, origin = self.load_series(cfg)
        if scored_from:
            import pandas as pd

            cutoffs = (pd.Timestamp(scored_from), pd.Timestamp(scored_from), None)
        else:
            if p.fold:  # the checks a whole cross-validation makes first, for a fold alone
                check_folds(cfg, frames)
            cutoffs = self.cutoffs(cfg, [f.index.to_numpy()[1:] for f in frames.values()])
        if cutoffs[2] is not None:  # a walk-forward fold sees nothing from its test end on
            frames = {k: f[f.index < cutoffs[2]] for k, f in frames.items()}
        frames, bad = self._usable(cfg, frames, bad, cutoffs[0])
        use_volume = all("volume" in f for f in frames.values())
        names = sorted(frames)
        x = [price_features(frames[n], use_volume) for n in names]
        market = read_market(cfg.path(p.market)) if p.market else None
        if market is not None:  # after the series' own: scale_free passes them through
            x = [np.concatenate([xi, market_at(market, frames[n].index[1:], f"market, {n}")],
                                axis=1).astype(np.float32) for n, xi in zip(names, x, strict=True)]
        returns = [xi[:, 0] for xi in x]
        y = [price_targets(r, p.target, p.horizon) for r in returns]
        if p.scale_free:
            x, scale = (list(v) for v in zip(*(scale_free(xi) for xi in x), strict=True))
        else:
            scale = [np.ones(len(xi)) for xi in x]
        dates = [frames[n].index.to_numpy()[1:] for n in names]  # step t is known at day t+1
        calendar = [assign_splits(dt, p.horizon, ~np.isnan(yi).any(1), cutoffs[:2])
                    for dt, yi in zip(dates, y, strict=True)]
        check_splits(names, calendar, cutoffs)
        split = calendar
        if p.split == "ticker" and p.fold:  # held out: tested only; the others: never tested
            held = held_out(names, p.folds, p.fold, cfg.train.seed)
            split = [np.where(s == TEST, s, UNUSED) if n in held else np.where(s == TEST, UNUSED, s)
                     for n, s in zip(names, calendar, strict=True)]
        data = PriceData(names, frames, dates, x, y, returns, scale, split, calendar,
                         feature_names(use_volume, p.scale_free)
                         + (list(MARKET_FEATURES) if p.market else []), cutoffs, None, None,
                         repairs, bad, source, origin, market)
        train_x = np.concatenate([xi[s == 0] for xi, s in zip(x, split, strict=True)])
        train_y = np.concatenate([yi[s == 0] for yi, s in zip(data.model_y(), split,
                                                               strict=True)])
        if len(train_x) == 0:
            raise ValueError(f"data: no training samples before {cutoffs[0].date()}")
        data.x_norm, data.y_norm = Normaliser().fit(train_x), Normaliser().fit(train_y)
        return data

    @staticmethod
    def _usable(cfg: Config, frames: dict, bad: list, history_end) -> tuple[dict, list]:
        """The series long enough for the lookback and horizon, with as many days before
        `history_end` (where validation, or a scored test, starts: the baselines fit on
        them); the others stop the run, or with skip_bad are left out with their reason."""
        p, need = cfg.task, cfg.task.lookback + cfg.task.horizon + 2
        why = {}
        for k, f in frames.items():
            if len(f) < need:
                why[k] = (f"{len(f)} rows, too short for lookback={p.lookback} and "
                          f"horizon={p.horizon}")
            elif (n := int((f.index < history_end).sum())) < need:
                why[k] = (f"{n} rows before {history_end.date()}, too few to train on and fit "
                          f"the baselines on (it needs {need})")
        if why and p.skip_bad and len(why) < len(frames):
            return {k: v for k, v in frames.items() if k not in why}, bad + list(why.items())
        if why:
            window = (f" between start={p.start or '...'} and end={p.end or '...'}"
                      if p.start or p.end else "")
            raise ValueError(f"data: series too short{window}: "
                             + "; ".join(f"{k}: {r}" for k, r in why.items())
                             + ("; skip_bad=true would leave out every series" if p.skip_bad
                                else "; or pass skip_bad=true to leave them out"))
        return frames, bad

    def cutoffs(self, cfg: Config, steps: list[np.ndarray]) -> tuple:
        """(validation start, test start, test end or None) on the calendar of all series'
        step dates: the latest val_frac and test_frac of it, or a walk-forward fold's."""
        from data_loaders.sequences import date_cutoffs, walk_forward_cutoffs, yearly_cutoffs

        d, p = cfg.data, cfg.task
        if p.fold and p.split == "calendar":  # the blocks were checked (check_folds)
            if p.test_start:
                return yearly_cutoffs(p.val_start, p.test_start, p.fold)
            return walk_forward_cutoffs(steps, d.val_frac, d.test_frac, p.fold, p.folds)
        if p.test_start:
            import pandas as pd

            return pd.Timestamp(p.val_start), pd.Timestamp(p.test_start), None
        return (*date_cutoffs(steps, d.val_frac, d.test_frac), None)

    def log_data(self, cfg: Config, data: PriceData) -> None:
        import mlflow
        import pandas as pd

        from pipeline.tasks import log_dataset

        frame = pd.concat({n: f for n, f in data.frames.items()}, names=["series", "date"])
        log_dataset(frame.reset_index(), data.source, "prices")
        end = data.cutoffs[2]
        mlflow.set_tags({"data_origin": data.origin, "val_start": str(data.cutoffs[0].date()),
                         "test_start": str(data.cutoffs[1].date()),
                         "test_end": str(end.date()) if end is not None else "",
                         "features": ",".join(data.features), "series": ",".join(data.names)})
        mlflow.log_table(data.table(), "data/splits.json")
        if cfg.task.split == "ticker" and cfg.task.fold:
            held = held_out(data.names, cfg.task.folds, cfg.task.fold, cfg.train.seed)
            mlflow.set_tag("held_out", ",".join(sorted(held)))
        if data.repairs:
            mlflow.log_text("\n".join(data.repairs), "data/repairs.txt")
        if cfg.task.skip_bad:  # counted when asked for (0 included), as speech counts files
            mlflow.log_metric("bad_series", len(data.bad))
        if data.bad:
            mlflow.log_text("\n".join(f"{name}: {why}" for name, why in data.bad),
                            "data/bad_series.txt")

    def network(self, cfg: Config, data: PriceData) -> dict:
        from models.heads import parse_quantiles, width
        from models.price_model import output_names

        m, p = cfg.model, cfg.task
        net = {k: getattr(m, k) for k in ("cell", "hidden", "layers", "dropout", "norm", "init")}
        outputs = output_names(p.target, p.horizon)
        quantiles = parse_quantiles(p.quantiles) if p.loss != "mse" else []
        return {"task": self.name, "model": {**net, "lookback": p.lookback},
                "n_in": len(data.features), "n_out": len(outputs) * width(p.loss, quantiles),
                "bptt": cfg.train.bptt, "lookback": p.lookback, "target": p.target,
                "horizon": p.horizon, "features": data.features, "outputs": outputs,
                "scale_free": p.scale_free,
                "loss": p.loss, "quantiles": quantiles}

    def objective(self, cfg: Config, data: PriceData, net) -> Objective:
        from pipeline.core.trainer import stream_objective

        device = next(net.parameters()).device
        loss = self._loss_fn(cfg)
        streams = data.streams(device)  # built once, read by every epoch's validation
        updates, validate = stream_objective(net, streams, cfg.train, cfg.task.lookback, loss)
        name = {"mse": "MSE", "gaussian": "Gaussian NLL", "quantile": "pinball loss"}
        if cfg.task.select == "qlike":
            def validate():  # noqa: F811 (the score the best epoch is picked by)
                raw, y = self._at_validation(net, cfg, streams)
                return {"val_loss": self._qlike(raw, y, cfg, data),
                        "val_nll": loss(raw, y).item()}
        return Objective(updates, validate, loss, f"{name[cfg.task.loss]} (normalised units)"
                         + ("; validation: QLIKE" if cfg.task.select == "qlike" else ""))

    @staticmethod
    def _at_validation(net, cfg: Config, streams):
        """The net's raw outputs at the validation anchors of all series, and the targets
        there (normalised units), on the CPU."""
        from data_loaders.sequences import VAL
        from pipeline.core.trainer import split_outputs

        raw, y = split_outputs(net, streams, VAL, cfg.train.bptt == "truncated",
                               cfg.task.lookback)
        return raw.cpu(), y.cpu()

    def _qlike(self, raw, y, cfg: Config, data: PriceData) -> float:
        """QLIKE of the variance a gaussian volatility model forecasts (mean^2 + scale^2),
        from its raw outputs and the targets (normalised), in the model's units (QLIKE
        does not change with the units)."""
        from models.heads import denormalise
        from pipeline.tasks.prices.risk import qlike

        out = denormalise(raw.numpy(), self.network(cfg, data), data.y_norm)
        actual = data.y_norm.inverse_transform(y.numpy())[:, 0]
        return float(qlike(out["point"][:, 0] ** 2 + out["scale"][:, 0] ** 2, actual ** 2).mean())

    @staticmethod
    def _loss_fn(cfg: Config):
        from models.heads import loss_fn, parse_quantiles

        return loss_fn(cfg.task.loss, parse_quantiles(cfg.task.quantiles))

    def horizon(self, net, cfg: Config, data: PriceData):
        if cfg.model.cell == "mlp":  # no state to measure
            return None
        from pipeline.core.horizon import validation_horizon

        return validation_horizon(net, data.streams(), cfg.task.lookback, self._loss_fn(cfg))

    def test_forecasts(self, net, cfg: Config, data: PriceData, model_at=None):
        """The model's and every baseline's forecasts at the test anchors of all series
        (pipeline.tasks.prices.evaluation.Forecasts): point baselines from pipeline/core/metrics.py,
        GARCH(1,1) fit on each series' training part, historical simulation. The model's
        come from `net`, or from `model_at(i, anchors)` (`served_forecasts`)."""
        from data_loaders.sequences import TEST, TRAIN
        from models.heads import denormalise, parse_quantiles, rescale
        from models.networks import forecast_at
        from pipeline.core import metrics
        from pipeline.tasks.prices import risk
        from pipeline.tasks.prices.evaluation import Forecasts

        p = cfg.task
        spec = self.calibrated(net, cfg, data) if model_at is None else None
        qs, vol = parse_quantiles(p.quantiles), p.target == "volatility"
        streams = data.streams()
        returns = data.returns
        train_idx = [np.flatnonzero(s == TRAIN) for s in data.calendar]
        base = metrics.baseline_forecasts(returns, data.y, train_idx, p.target, p.horizon)
        parts = []
        for i, a in enumerate(streams.anchors(TEST, p.lookback)):
            if not len(a):
                continue
            if model_at is None:
                raw = forecast_at(net, streams.x[i], a, cfg.train.bptt == "truncated",
                                  p.lookback)
                model = rescale(denormalise(raw.numpy(), spec, data.y_norm), data.scale[i][a])
            else:
                model = model_at(i, a)
            try:
                garch = risk.garch_forecasts(returns[i], train_idx[i], a, p.horizon, qs)
            except ValueError as err:
                raise ValueError(f"{data.names[i]}: {err}") from None
            points = {"model": model["point"], **{k: v[i][a] for k, v in base.items()},
                      "garch": garch["vol"][:, None] if vol else garch["mean"]}
            quantiles = {"model": model["quantiles"][:, 0]} if "quantiles" in model else {}
            if quantiles and p.aci:  # an outcome is known `horizon` steps after its forecast
                quantiles["model_aci"] = risk.adaptive_intervals(
                    quantiles["model"], data.y[i][a][:, 0], qs, p.aci, p.horizon)
            if not vol:  # GARCH's quantiles are of the next return
                quantiles["garch"] = garch["quantiles"]
            quantiles["historical"] = risk.historical_quantiles(data.y[i][:, 0], a, p.horizon,
                                                                qs)
            ref = base["persistence"][i][a] if vol else np.zeros_like(data.y[i][a])
            # a normal forecast of the volatility forecasts the variance mean^2 + scale^2
            variances = ({"model": model["point"][:, 0] ** 2 + model["scale"][:, 0] ** 2}
                         if vol and "scale" in model else {})
            parts.append(Forecasts(np.full(len(a), data.names[i]), data.dates[i][a],
                                   data.y[i][a], ref, points, quantiles, variances))
        if not parts:
            raise ValueError("data: the test split has no samples with a full lookback")
        return Forecasts.concat(parts)

    def served_forecasts(self, model, cfg: Config, data: PriceData):
        """`test_forecasts` with the model's forecasts from a served model (the pyfunc's
        python model), as a client gets them from each series' prices."""
        from data_loaders.sequences import TEST
        from pipeline.tasks.prices.evaluation import from_response

        anchors = {n: a for n, a in zip(data.names, data.streams().anchors(TEST, cfg.task.lookback),
                                        strict=True) if len(a)}
        rolled = self._rolling(model, data, anchors)

        def model_at(i, a):
            steps, rows = rolled[data.names[i]]
            return from_response(model.spec, rows.iloc[np.searchsorted(steps, a)])

        return self.test_forecasts(None, cfg, data, model_at)

    def evaluate(self, net, cfg: Config, data: PriceData) -> Evaluation:
        return self.scored(self.test_forecasts(net, cfg, data), cfg)

    def scored(self, forecasts, cfg: Config) -> Evaluation:
        """The test table, per-series table and plots (one run's, or the folds' pooled:
        a walk-forward backtest's, or a cross-validation's over held-out series)."""
        from models.heads import parse_quantiles
        from pipeline.core import plots
        from pipeline.tasks.prices import evaluation

        p, qs = cfg.task, parse_quantiles(cfg.task.quantiles)
        table = evaluation.table(forecasts, p.target, p.horizon, qs)
        series = evaluation.per_series(forecasts, p.target, qs, p.horizon)
        first = forecasts.subset(forecasts.series == forecasts.series[0])
        best = table["model"]["best_baseline"]
        band = first.quantiles.get("model")
        fig = plots.forecast_vs_actual(
            first.dates, first.actual[:, 0], first.points["model"][:, 0],
            first.points[best][:, 0], best,
            f"{first.series[0]}: test forecast vs realised (first output)",
            band=(band[:, 0], band[:, -1], f"model {qs[0]:g}-{qs[-1]:g} quantiles")
            if band is not None else None)
        table["model"].update(evaluation.series_shares(series))
        figures = {"plots/test_forecast.png": fig}
        if p.target == "volatility" and len(series) > 1:
            figures["plots/qlike_ratio_vs_garch.png"] = plots.ratio_by_series(
                series["series"], series["model"] / series["garch"], "GARCH(1,1)",
                series["dm_p_garch"], evaluation.SIGNIFICANT)
        loss = "QLIKE" if p.target == "volatility" else "MSE"
        years = evaluation.per_year(forecasts, p.target)
        return Evaluation(table, figures,
                          {"evaluation/per_series.csv": series,
                           "evaluation/per_year.csv": years,
                           "evaluation/test_forecasts.npz": forecasts},
                          f"per series, test {loss} (lower is better):\n" + _shown(series)
                          + f"\n\nper year of the test, {loss} and shares of series:\n"
                          + _shown(_year_view(years), rows=40,
                                   name="evaluation/per_year.csv"))

    def pool(self, cfg: Config, run_ids: list[str]) -> Evaluation | None:
        """The folds (walk-forward blocks, or groups of held-out series), their test
        forecasts pooled and scored."""
        from mlflow.artifacts import download_artifacts

        from pipeline.tasks.prices.evaluation import Forecasts

        parts = [Forecasts.load(download_artifacts(
            run_id=r, artifact_path="evaluation/test_forecasts.npz")) for r in run_ids]
        return self.scored(Forecasts.concat(parts), cfg)

    def served_model(self) -> type:
        from models.price_model import PriceForecaster

        return PriceForecaster

    def log_model(self, net, cfg: Config, data: PriceData):
        import pandas as pd

        from models.price_model import price_columns, request_row
        from models.served import log_served

        spec = self.calibrated(net, cfg, data)
        if "calibrated_z" in spec:
            import mlflow

            mlflow.log_dict({k: spec[k] for k in ("quantiles", "normal_z", "calibrated_z")},
                            "calibration.json")
        name = data.names[0]  # the input example: a real request, the last L + 1 prices
        tail = data.frames[name].iloc[-(spec["lookback"] + 1):]
        example = pd.DataFrame([request_row(tail, name, price_columns(spec), data.market)])
        return log_served(self.served_model(), net, spec,
                          {"x": data.x_norm.to_dict(), "y": data.y_norm.to_dict()}, example)

    def calibrated(self, net, cfg: Config, data: PriceData) -> dict:
        """The network's spec; with calibrate=true, also each quantile's z from the
        validation residuals (y - mean) / scale in the model's units (split conformal:
        validation coverage is then nominal at every quantile), which `denormalise` uses
        instead of the normal's. From the net and the data: the same in every step."""
        from models.heads import gaussian, normal_z

        spec = self.network(cfg, data)
        if not cfg.task.calibrate:
            return spec
        raw, y = self._at_validation(net, cfg, data.streams())
        mean, scale = gaussian(raw)
        z = ((y - mean) / scale)[:, 0].numpy()
        spec["normal_z"] = normal_z(spec["quantiles"])
        spec["calibrated_z"] = [float(np.quantile(z, q)) for q in spec["quantiles"]]
        return spec

    def target(self, spec: dict) -> str:
        return f"{spec['target']}-h{spec['horizon']}{_suffix(spec.get('loss', 'mse'))}"

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
            for err, m, f in zip(errors, models, forecasts, strict=True):
                steps, rows = f[name]
                values = rows[m.spec["outputs"]].to_numpy()
                err.append(values[np.searchsorted(steps, common)] - actual)
        if not sum(len(e) for e in errors[0]):
            raise ValueError("data: no validation sample that every model can forecast (the "
                             "validation split is shorter than the longest lookback)")
        return [float(np.sqrt(np.mean(np.concatenate(e) ** 2))) for e in errors]

    def _rolling(self, model, data: PriceData, anchors: dict) -> dict:
        """{series: (anchors, the response's rows)}: a served model's rolling forecasts up
        to each series' last anchor, from the prices."""
        import pandas as pd

        from models.price_model import price_columns, request_row

        columns, out = price_columns(model.spec), {}
        requests = pd.DataFrame([request_row(data.frames[n].iloc[: a[-1] + 2], n, columns,
                                             data.market) for n, a in anchors.items()])
        for part in in_calls(model, requests):
            got = model.predict(None, part, {"mode": "rolling"})
            for n, rows in got.groupby("series_id", sort=False):
                out[n] = (rows["step"].to_numpy() - 1, rows)
        return out

    def requests(self, path: Path, spec: dict, repair: str, market: str = "",
                 skip_bad: bool = False) -> tuple[pd.DataFrame, list]:
        import pandas as pd

        from data_loaders.market import read_market
        from data_loaders.prices import read_prices_skipping
        from models.price_model import market_columns_of, price_columns, request_row

        reads_market = bool(market_columns_of(spec))
        if reads_market and not market:
            raise ValueError("market: this model reads the market at each price: give the "
                             "market table (CSV) covering the input's days (python -m "
                             "data_loaders.market)")
        table = read_market(market) if market else None
        series, _, bad = read_prices_skipping(path, repair, "input", skip_bad)
        return pd.DataFrame([request_row(f, n, price_columns(spec),
                                         table if reads_market else None)
                             for n, f in series.items()]), bad


def _year_view(years: pd.DataFrame) -> pd.DataFrame:
    """The per-year table as printed: the model and the GARCH/HAR/EWMA baselines, and the
    shares against GARCH and HAR (the whole table is logged)."""
    keep = ["year", "samples", "series", "model", "garch", "har", "ewma",
            "share_beats_garch", "share_beats_har", "share_beats_garch_and_har"]
    view = years[[c for c in keep if c in years]]
    return view.rename(columns=lambda c: c.replace("share_beats_", "beats_"))


def _shown(table: pd.DataFrame, rows: int = 12, name: str = "evaluation/per_series.csv") -> str:
    """A table printed whole, or its first `rows` and a count (the whole: artifact `name`)."""
    text = table.head(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}")
    more = len(table) - rows
    return text + (f"\n... and {more} more ({name})" if more > 0 else "")


def held_out(names: list[str], folds: int, fold: int, seed: int) -> set[str]:
    """The series fold k of K holds out: the names shuffled by `seed`, every K-th from
    k-1 (groups differ in size by one at most; each series is held out once)."""
    order = np.random.default_rng(seed).permutation(sorted(names))
    return {str(n) for n in order[fold - 1::folds]}


def check_folds(cfg: Config, frames: dict) -> None:
    """What every fold needs, checked before any trains: a group of series per fold
    (split=ticker), or enough test days in every walk-forward block."""
    p = cfg.task
    if p.split == "ticker" and len(frames) < p.folds:
        raise ValueError(f"folds: split=ticker holds out each of {p.folds} groups of series "
                         f"in turn, but the data has {len(frames)} series")
    if p.split == "calendar":
        steps = [f.index.to_numpy()[1:] for f in frames.values()]
        check_years(cfg, steps) if p.test_start else check_blocks(cfg, steps)


def check_years(cfg: Config, steps: list[np.ndarray]) -> None:
    """Refuse yearly walk-forward blocks (val_start/test_start) with fewer than
    MIN_BLOCK_DAYS test days (a year past the data's end, a test_start late in its year
    or outside the data)."""
    from data_loaders.sequences import yearly_cutoffs

    p, days = cfg.task, np.unique(np.concatenate(steps))
    need, span = max(MIN_BLOCK_DAYS, 2 * p.horizon), f"{str(days[0])[:10]} to {str(days[-1])[:10]}"
    for k in range(1, p.folds + 1):
        _, start, end = yearly_cutoffs(p.val_start, p.test_start, k)
        n = int(((days >= start.to_datetime64()) & (days < end.to_datetime64())).sum())
        if n >= need:
            continue
        if k == 1:
            raise ValueError(f"test_start: the first yearly block, {start.date()} to the end of "
                             f"{start.year}, has {n} test days (the data run from {span}); a "
                             f"block needs {need} or more")
        raise ValueError(f"folds: block {k}, the year from {start.date()}, has {n} test days "
                         f"(the data run from {span}); at most folds={k - 1} yearly blocks from "
                         f"test_start={p.test_start}")


def check_blocks(cfg: Config, steps: list[np.ndarray]) -> None:
    """Refuse walk-forward blocks too short to score: fewer than MIN_BLOCK_DAYS test days,
    or two horizons. steps: each series' step dates."""
    p, test_frac = cfg.task, cfg.data.test_frac
    days = len(np.unique(np.concatenate(steps))) * test_frac
    need = max(MIN_BLOCK_DAYS, 2 * p.horizon)
    if days // p.folds < need:
        raise ValueError(f"folds: {p.folds} blocks of the {days:.0f} test days (test_frac="
                         f"{test_frac}) are {int(days // p.folds)} days each; a block needs "
                         f"{need} or more: at most folds={int(days // need)}, or a larger "
                         "test_frac")


TASK = PricesTask()
