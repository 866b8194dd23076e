"""The market table: each day's market-wide inputs, from the cross-section of a universe
of stocks, beside each series' own.

A model that sees only one series reads a market-wide surge (March 2020) like a spike of
its own that reverts (an earnings day), and under-reacts. Three numbers per day tell it
what the whole market is doing, each a mean over the universe's series that trade that
day, from their past only (`scale_free`'s features), each stock's return over its
trailing volatility capped at +-Z_CAP so that one stock's collapse is not the market's:

- `market_vol_ratio`: the mean of log(trailing volatility / the past year's volatility):
  how far the market's volatility stands from its year;
- `market_shock`: log1p of the mean squared standardised return, averaged over the last
  SHOCK_DAYS days: how hard the market moved, either way;
- `market_move`: the day's mean standardised return, signed: a falling market raises
  volatility more than a rising one (the leverage effect).

Built once from a folder or Parquet file of price series (`python -m data_loaders.market
--data data/universe.parquet --out data/market.csv`) and read as a CSV of `date` and
the three columns. A request to a model trained with it sends the values at each of
its prices (`market_at`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from data_loaders.files import atomic_write
from data_loaders.prices import (
    REPAIRS,
    SCALE_FREE,
    PriceDataError,
    price_features,
    read_prices_skipping,
    scale_free,
)

MARKET_FEATURES = ("market_vol_ratio", "market_shock", "market_move")
Z_CAP = 10.0  # a standardised return beyond +-this (a 10-sigma day) counts as this
SHOCK_DAYS = 5  # the shock is the mean over this many trading days
MOST = 20.0  # |value| above this cannot come from any prices (a table or request in error)


def market_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The market table of a universe of price frames: index `date` (every day any series
    has a return), columns MARKET_FEATURES, float64."""
    ratio, z = {}, {}
    at_ratio, at_z = SCALE_FREE.index("log_vol_over_year_vol"), SCALE_FREE.index("return_over_vol")
    for name, frame in frames.items():
        x = scale_free(price_features(frame, use_volume=False))[0].astype(np.float64)
        days = pd.DatetimeIndex(frame.index[1:])  # step t is known at day t+1
        ratio[name] = pd.Series(x[:, at_ratio], index=days)
        z[name] = pd.Series(np.clip(x[:, at_z], -Z_CAP, Z_CAP), index=days)
    z = pd.concat(z, axis=1, sort=True)  # series of other spans: the union of their days
    shock = np.log1p((z ** 2).mean(axis=1))
    table = pd.DataFrame({MARKET_FEATURES[0]: pd.concat(ratio, axis=1, sort=True).mean(axis=1),
                          MARKET_FEATURES[1]: shock.rolling(SHOCK_DAYS, min_periods=1).mean(),
                          MARKET_FEATURES[2]: z.mean(axis=1)})
    table.index.name = "date"
    return table


def read_market(path: str | Path, what: str = "market") -> pd.DataFrame:
    """A market table CSV, checked: the columns, every date readable and later than the
    one before, every value a finite number within MOST. Errors name the file, the row
    (the file's line) and the column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is not a file (a market table: python -m "
                                "data_loaders.market --data PRICES --out FILE.csv)")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    gone = [c for c in ("date", *MARKET_FEATURES) if c not in raw.columns]
    if gone:
        raise PriceDataError(f"{path}: missing column(s) {gone}; a market table has "
                             f"date,{','.join(MARKET_FEATURES)}")
    dates = pd.to_datetime(raw["date"], format="%Y-%m-%d", errors="coerce")
    table = pd.DataFrame({c: pd.to_numeric(raw[c], errors="coerce").to_numpy(np.float64)
                          for c in MARKET_FEATURES},
                         index=pd.DatetimeIndex(dates, name="date"))
    unread = np.flatnonzero(dates.isna())
    if len(unread):
        k = int(unread[0])
        raise PriceDataError(f"{path}, row {k + 2}, column 'date': cannot read "
                             f"{raw['date'][k]!r} as YYYY-MM-DD")
    later = np.diff(dates.to_numpy()) > np.timedelta64(0)
    if not later.all():
        k = int(np.flatnonzero(~later)[0]) + 1
        raise PriceDataError(f"{path}, row {k + 2}, column 'date': {raw['date'][k]} is not "
                             "after the row before; dates must be strictly increasing")
    for c in MARKET_FEATURES:
        wrong = ~(np.abs(table[c].to_numpy()) <= MOST)  # NaN (unreadable) is wrong too
        if wrong.any():
            k = int(np.flatnonzero(wrong)[0])
            raise PriceDataError(f"{path}, row {k + 2}, column '{c}': expected a number "
                                 f"within +-{MOST:g}, got {raw[c][k]!r}")
    if table.empty:
        raise PriceDataError(f"{path}: no rows")
    return table


def market_at(table: pd.DataFrame, dates, what: str) -> np.ndarray:
    """The table's values on these days, float64 [T, len(MARKET_FEATURES)]; a day the
    table lacks stops it, named (a market table must cover every day a series is read
    on)."""
    days = pd.DatetimeIndex(dates)
    at = table.index.get_indexer(days)
    if (at < 0).any():
        day, first = days[int(np.flatnonzero(at < 0)[0])], table.index[0].date()
        raise PriceDataError(f"{what}: the market table has no row for {day.date()} (it "
                             f"covers {first} to {table.index[-1].date()} on the universe's "
                             "trading days)" + (f"; read the series from the table's first "
                                                f"day on: start={first}"
                                                if day.date() < first else ""))
    return table.to_numpy(np.float64)[at]


def market_columns(table: pd.DataFrame, dates, what: str) -> dict[str, list[float]]:
    """A request's market columns for prices on these days: the table's values, one per
    price. The first price of a series has no return before it, so its value is not read:
    where the table lacks that day (a series that starts with the table) it repeats the
    second's. A streamed piece that continues a series has its first day in the table,
    and the model reads it."""
    days = pd.DatetimeIndex(dates)
    if len(days) > 1 and days[0] not in table.index:
        values = market_at(table, days[1:], what)
        values = np.concatenate([values[:1], values])
    else:
        values = market_at(table, days, what)
    return {name: values[:, k].tolist() for k, name in enumerate(MARKET_FEATURES)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a folder of price CSV files or a "
                        "Parquet file of series (as `data` for the prices task)")
    parser.add_argument("--out", required=True, help="the market table CSV to write")
    parser.add_argument("--repair", default="none", choices=REPAIRS, help="bad CSV rows: "
                        "none (stop, naming the file, line and column), drop or ffill")
    parser.add_argument("--skip_bad", default="false", choices=("true", "false"),
                        help="true: leave bad series out (counted and listed)")
    args = parser.parse_args(argv)
    try:
        frames, repairs, bad = read_prices_skipping(args.data, args.repair,
                                                    skip_bad=args.skip_bad == "true")
    except (OSError, ValueError) as err:  # PriceDataError included: one line, no traceback
        raise SystemExit(f"error: {err}") from None
    table = market_table(frames)
    atomic_write(args.out, lambda tmp: table.to_csv(tmp, float_format="%.6f",
                                                    date_format="%Y-%m-%d"))
    print(f"{args.out}: {len(table)} days, {table.index[0].date()} to "
          f"{table.index[-1].date()}, from {len(frames)} series"
          + (f"; {len(repairs)} row(s) repaired ({args.repair})" if repairs else "")
          + (f"; left out {len(bad)}: " + "; ".join(f"{name} ({why})" for name, why in bad)
             if bad else ""))


if __name__ == "__main__":
    main()
