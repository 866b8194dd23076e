"""Step `prepare`: price data -> features, targets, chronological splits, normalisers.

Reads: a Yahoo-style CSV file or folder (`data`), or yfinance (`tickers`, cached
under `cache_dir`). Writes (as the `prepare` entry point): an MLflow run with the
dataset as its input, the split summary and any repairs made to the data.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from data_loaders.prices import (
    download_prices,
    feature_names,
    price_features,
    price_targets,
    read_prices,
)
from data_loaders.sequences import SPLIT_NAMES, Normaliser, assign_splits, date_cutoffs
from pipeline import tracking
from pipeline.config import ROOT, Config, DataConfig, add_arguments, from_args
from pipeline.tracking import log_new_params, start_run
from pipeline.trainer import Streams


@dataclass
class Prepared:
    """Everything training and evaluation read, in raw units per series."""

    names: list[str]
    frames: dict[str, pd.DataFrame]  # the price frames as loaded
    dates: list[np.ndarray]  # [T] day of each step
    x: list[np.ndarray]  # [T, F] features
    y: list[np.ndarray]  # [T, out] targets (NaN at the end)
    split: list[np.ndarray]  # [T]
    features: list[str]
    cutoffs: tuple[pd.Timestamp, pd.Timestamp]
    x_norm: Normaliser
    y_norm: Normaliser
    repairs: list[str]
    source: str

    def streams(self, device: torch.device | str = "cpu") -> Streams:
        def t(a):
            return torch.as_tensor(a, device=device)

        return Streams([t(self.x_norm.transform(x)) for x in self.x],
                       [t(self.y_norm.transform(y)) for y in self.y], list(self.split))

    def summary(self) -> pd.DataFrame:
        rows = []
        for name, dates, split in zip(self.names, self.dates, self.split, strict=True):
            row = {"series": name, "first": str(dates[0])[:10], "last": str(dates[-1])[:10]}
            row.update({k: int((split == v).sum()) for v, k in SPLIT_NAMES.items()})
            rows.append(row)
        return pd.DataFrame(rows)


def load_series(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], list[str], str]:
    """The price frames named by the config, the repairs made, and the source string."""
    if cfg.tickers:
        tickers = [t.strip().upper() for t in cfg.tickers.split(",") if t.strip()]
        cache = resolve(cfg.cache_dir)
        series, repairs = download_prices(tickers, cfg.start, cfg.end, cfg.interval, cache,
                                          cfg.refresh, cfg.repair)
        return series, repairs, f"yfinance:{','.join(tickers)}:{cfg.interval}"
    path = resolve(cfg.path())
    series, repairs = read_prices(path, cfg.repair)
    series = {k: v.loc[cfg.start or None:cfg.end or None] for k, v in series.items()}
    return series, repairs, str(path)


def resolve(path: str) -> Path:
    """Relative paths are taken from the working directory, then from the project root."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else ROOT / p


def prepare(cfg: Config) -> Prepared:
    d = cfg.data
    frames, repairs, source = load_series(d)
    short = {k: len(v) for k, v in frames.items() if len(v) < d.lookback + d.horizon + 2}
    if short:
        raise ValueError(f"data: series too short for lookback={d.lookback} and "
                         f"horizon={d.horizon}: {short} rows")
    use_volume = all("volume" in f for f in frames.values())
    names = sorted(frames)
    x = [price_features(frames[n], use_volume) for n in names]
    y = [price_targets(xi[:, 0], d.target, d.horizon) for xi in x]
    dates = [frames[n].index.to_numpy()[1:] for n in names]  # step t is known at day t+1
    cutoffs = date_cutoffs(dates, d.val_frac, d.test_frac)
    split = [assign_splits(dt, d.horizon, ~np.isnan(yi).any(1), cutoffs)
             for dt, yi in zip(dates, y, strict=True)]
    train_x = np.concatenate([xi[s == 0] for xi, s in zip(x, split, strict=True)])
    train_y = np.concatenate([yi[s == 0] for yi, s in zip(y, split, strict=True)])
    if len(train_x) == 0:
        raise ValueError(f"data: no training samples before {cutoffs[0].date()}")
    return Prepared(names, frames, dates, x, y, split, feature_names(use_volume), cutoffs,
                    Normaliser().fit(train_x), Normaliser().fit(train_y), repairs, source)


def log_dataset(prep: Prepared) -> None:
    """The data as the run's input, its split summary and the repairs, into the active run."""
    import mlflow

    frame = pd.concat({n: f for n, f in prep.frames.items()}, names=["series", "date"])
    tracking.log_dataset(frame.reset_index(), prep.source, "prices")
    mlflow.log_params({"val_start": str(prep.cutoffs[0].date()),
                       "test_start": str(prep.cutoffs[1].date()),
                       "feature_names": ",".join(prep.features), "series": ",".join(prep.names)})
    mlflow.log_table(prep.summary(), "data/splits.json")
    if prep.repairs:
        mlflow.log_text("\n".join(prep.repairs), "data/repairs.txt")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, set(DataConfig().__dataclass_fields__) | {"experiment", "preset"})
    cfg = from_args(parser.parse_args(argv))
    prep = prepare(cfg)
    with start_run(cfg, run_name="prepare"):
        log_dataset(prep)
        log_new_params({k: v for k, v in cfg.params().items()
                        if k in DataConfig.__dataclass_fields__})
    print(prep.summary().to_string(index=False))


if __name__ == "__main__":
    main()
