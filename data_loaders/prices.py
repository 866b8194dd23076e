"""Daily price series: Yahoo-style CSV files, yfinance downloads with an on-disk
cache, and the per-step features and targets the models learn from.

A price frame is indexed by date (sorted, unique) with float columns
`open, high, low, close, adj_close` and, when the source has it, `volume`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from data_loaders.files import atomic_write

log = logging.getLogger(__name__)

PRICE_COLUMNS = ("open", "high", "low", "close", "adj_close")
REPAIRS = ("none", "drop", "ffill")
TARGETS = ("returns", "volatility")
DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "ISO8601")


class PriceDataError(ValueError):
    """Bad price data; the message names the file, the row and the column."""


def _canonical(name: str) -> str:
    return str(name).strip().lower().replace(" ", "_")


def _parse_dates(raw: pd.Series) -> pd.Series:
    """Parse ISO (2017-12-29) or US (12/29/2017) dates: the format that parses most rows wins."""
    best = None
    for fmt in DATE_FORMATS:
        parsed = pd.to_datetime(raw, format=fmt, errors="coerce")
        if best is None or parsed.notna().sum() > best.notna().sum():
            best = parsed
    return best


def _problems(frame: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """One row per bad cell: line (1-based file line, header is line 1), column, problem."""
    rows = []
    line = raw.index.to_numpy() + 2
    for col in frame.columns:
        values, given = frame[col], raw[col] if col in raw else None
        missing = values.isna()
        if given is not None:
            text = given.astype("string").str.strip()
            blank = text.isna() | text.str.lower().isin(["", "nan", "null", "none"])
            unparsable = missing & ~blank
            for i in np.flatnonzero(unparsable):
                rows.append((line[i], col, f"cannot parse {given.iloc[i]!r}"))
            missing = missing & blank
        for i in np.flatnonzero(missing):
            rows.append((line[i], col, "missing value (NaN)"))
        if col != "date":  # "inf" or an overflow such as "1e999" parses, but is no price
            for i in np.flatnonzero(np.isinf(values.to_numpy(np.float64))):
                rows.append((line[i], col, f"infinite value {given.iloc[i]!r}"))
        if col in PRICE_COLUMNS:
            for i in np.flatnonzero(values <= 0):
                rows.append((line[i], col, f"non-positive price {float(values.iloc[i]):g}"))
        if col == "volume":
            for i in np.flatnonzero(values < 0):
                rows.append((line[i], col, f"negative volume {float(values.iloc[i]):g}"))
    dup = frame["date"].duplicated(keep="first") & frame["date"].notna()
    for i in np.flatnonzero(dup):
        rows.append((line[i], "date", f"duplicate date {frame['date'].iloc[i].date()}"))
    return pd.DataFrame(rows, columns=["line", "column", "problem"]).sort_values("line")


def read_price_csv(path: str | Path, repair: str = "none") -> tuple[pd.DataFrame, list[str]]:
    """Read a Yahoo-style CSV export into a price frame (see `parse_prices`)."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise PriceDataError(f"{path}: empty file (no header, no rows)") from None
    except UnicodeDecodeError:
        raise PriceDataError(f"{path}: not a text CSV file (binary content)") from None
    except pd.errors.ParserError as err:  # a ragged row, or a delimiter it cannot tell
        raise PriceDataError(f"{path}: not a readable CSV: {str(err).strip()}") from None
    return parse_prices(raw, Path(path), repair)


def parse_prices(raw: pd.DataFrame, path: Path,
                 repair: str = "none") -> tuple[pd.DataFrame, list[str]]:
    """Validate a Yahoo-style table (cells as text, as read from the file) into a price frame.

    Accepts ISO or M/D/YYYY dates, CRLF line ends, any header case, a missing
    `Adj Close` (then the close is used), extra columns (`OpenInt`) and a leading
    unnamed index column. Bad rows (unparsable, NaN, non-positive prices,
    duplicate dates) raise PriceDataError naming file, line and column, unless
    `repair` is `drop` (drop those rows) or `ffill` (carry the last good value
    forward; rows with a bad date and repeated dates are dropped). Returns the
    frame and the list of repairs made, so the caller can log them. Line numbers
    count the header as line 1.
    """
    if repair not in REPAIRS:
        raise ValueError(f"repair must be one of {REPAIRS}, got {repair!r}")
    raw.columns = [_canonical(c) for c in raw.columns]
    if len(raw.columns) and (raw.columns[0] == "" or raw.columns[0].startswith("unnamed:")):
        raw = raw.iloc[:, 1:]
    missing = [c for c in ("date", "open", "high", "low", "close") if c not in raw.columns]
    if missing:
        delimiter = next((d for d in (";", "\t", "|") if d in "".join(raw.columns)), None)
        hint = (f" (the header holds {delimiter!r}: columns must be separated by commas)"
                if delimiter else "")
        raise PriceDataError(f"{path}: missing column(s) {missing}; found "
                             f"{list(raw.columns)[:10]}{hint}")
    if raw.empty:
        raise PriceDataError(f"{path}: no data rows")
    wanted = ["date", "open", "high", "low", "close", "adj_close", "volume"]
    raw = raw[[c for c in wanted if c in raw.columns]].reset_index(drop=True)

    frame = pd.DataFrame({"date": _parse_dates(raw["date"].str.strip())})
    for col in raw.columns[1:]:
        frame[col] = pd.to_numeric(raw[col].str.strip(), errors="coerce")
    if "adj_close" not in frame:
        frame["adj_close"] = frame["close"]
        raw = raw.assign(adj_close=raw["close"])

    bad = _problems(frame, raw)
    repairs: list[str] = []
    if not bad.empty:
        if repair == "none":
            shown = "; ".join(f"line {r.line}, column '{r.column}': {r.problem}"
                              for r in bad.head(5).itertuples())
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise PriceDataError(
                f"{path}: {shown}{more}. Fix the file, or pass repair=drop or repair=ffill")
        frame, repairs = _repair(frame, bad, repair, path)
    frame = frame.sort_values("date").set_index("date")
    frame.index.name = "date"
    return frame[[c for c in (*PRICE_COLUMNS, "volume") if c in frame]], repairs


def _repair(frame: pd.DataFrame, bad: pd.DataFrame, how: str, path: Path):
    """Apply the opted-in repair; every change is described in the returned list."""
    repairs = [f"{path.name} line {r.line}, column '{r.column}': {r.problem} -> "
               + ("row dropped" if how == "drop" or r.column == "date" else "forward-filled")
               for r in bad.itertuples()]
    rows = bad["line"].to_numpy() - 2
    if how == "drop":
        frame = frame.drop(index=np.unique(rows))
    else:
        for r in bad[bad.column != "date"].itertuples():
            frame.loc[r.line - 2, r.column] = np.nan
        frame = frame.drop(index=np.unique(bad.loc[bad.column == "date", "line"] - 2))
        frame = frame.ffill()
        if frame.isna().any().any():
            raise PriceDataError(f"{path}: the first rows are bad and have no earlier value "
                                 "to forward-fill from; use repair=drop")
    for line in repairs:
        log.warning("repair: %s", line)
    return frame, repairs


def _clean_numbers(table: pd.DataFrame) -> bool:
    """Whether a Parquet table of typed columns (dates, numbers) holds no bad cell, checked
    for all series at once; the text path then names any problem by row and column."""
    prices = [c for c in PRICE_COLUMNS if c in table]
    typed = pd.api.types.is_datetime64_any_dtype(table["date"]) and all(
        pd.api.types.is_numeric_dtype(table[c]) for c in [*prices, "volume"] if c in table)
    if not typed or table["date"].isna().any():
        return False
    values = table[prices].to_numpy(np.float64)
    volume = table["volume"].to_numpy(np.float64) if "volume" in table else np.zeros(1)
    return bool(np.isfinite(values).all() and (values > 0).all() and np.isfinite(volume).all()
                and (volume >= 0).all() and not table.duplicated(["series_id", "date"]).any())


def read_price_parquet(path: Path, repair: str = "none",
                       skip_bad: bool = False) -> tuple[dict[str, pd.DataFrame], list, list]:
    """A Parquet table of prices: one series, or several in a `series_id` column. A table
    of typed columns with no bad cell is taken as it is (fast); otherwise each series is
    checked as a CSV file is. Returns the series, the repairs and the bad series left out
    (`skip_bad`)."""
    table = pd.read_parquet(path)
    table.columns = [_canonical(c) for c in table.columns]
    if "series_id" not in table:
        table = table.assign(series_id=path.stem)
    if {"date", "open", "high", "low", "close"} <= set(table.columns) and _clean_numbers(table):
        if "adj_close" not in table:
            table = table.assign(adj_close=table["close"])
        keep = [c for c in (*PRICE_COLUMNS, "volume") if c in table]
        table = table.astype({c: np.float64 for c in PRICE_COLUMNS})  # volume as it is
        return {str(name): part.set_index("date").sort_index()[keep].rename_axis("date")
                for name, part in table.groupby("series_id", sort=True, observed=True)}, [], []
    series, repairs, bad = {}, [], []
    for name, part in table.groupby("series_id", sort=True, observed=True):
        text = part.drop(columns="series_id").reset_index(drop=True)
        text = text.astype(str).apply(lambda c: c.str.replace(r"^(nan|NaT|None)$", "", regex=True))
        try:
            series[str(name)], fixed = parse_prices(text, Path(f"{path}[series_id={name}]"),
                                                    repair)
        except PriceDataError as err:
            bad.append((f"{path}[series_id={name}]", str(err).split(": ", 1)[-1]))
            continue
        repairs += fixed
    _stop_unless(bad, skip_bad, len(series))
    return series, repairs, bad


def _stop_unless(bad: list[tuple[str, str]], skip_bad: bool, kept: int) -> None:
    """Bad series stop the run, all of them named, unless they are to be left out (and
    some are good)."""
    if bad and (not skip_bad or not kept):
        if len(bad) == 1:
            raise PriceDataError(f"{bad[0][0]}: {bad[0][1]}; or pass skip_bad=true to leave "
                                 "it out")
        listing = "; ".join(f"{p}: {why}" for p, why in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise PriceDataError(f"{len(bad)} bad price series: {listing}{more}. Fix or remove "
                             "them, or pass skip_bad=true to leave them out (the list is then "
                             "logged)")


def read_prices(path: str | Path, repair: str = "none", what: str = "data",
                skip_bad: bool = False) -> tuple[dict[str, pd.DataFrame], list]:
    """A CSV file (one series, named by the file stem), a folder of CSV files, or a
    Parquet file (one series, or several in a `series_id` column). Errors about the
    path name the parameter `what` that gave it. Bad files stop the read (all named),
    or with `skip_bad` are left out: `read_prices_skipping` returns which."""
    series, repairs, _ = read_prices_skipping(path, repair, what, skip_bad)
    return series, repairs


def read_prices_skipping(path: str | Path, repair: str = "none", what: str = "data",
                         skip_bad: bool = False) -> tuple[dict[str, pd.DataFrame], list, list]:
    """`read_prices`, also returning the bad files or series left out: (name, why)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    if path.suffix == ".parquet":
        return read_price_parquet(path, repair, skip_bad)
    if not path.is_dir():
        frame, repairs = read_price_csv(path, repair)
        return {path.stem: frame}, repairs, []
    series, repairs, bad = {}, [], []
    for f in csv_files(path, what):
        try:
            series[f.stem], fixed = read_price_csv(f, repair)
        except PriceDataError as err:
            bad.append((str(f), str(err).removeprefix(f"{f}: ")))
            continue
        repairs += fixed
    _stop_unless(bad, skip_bad, len(series))
    return series, repairs, bad


CACHE_VERSION = 1  # changes when what a read gives changes: older cached reads are not used


def cached_prices(path: str | Path, repair: str, skip_bad: bool, cache_dir: str | Path,
                  what: str = "data") -> tuple[dict[str, pd.DataFrame], list, list]:
    """`read_prices_skipping`, the parsed CSV files kept under `cache_dir`/prices keyed by
    their content and the options: hundreds of files are read once, then in well under a
    second. Nothing is cached for a read that fails."""
    import hashlib
    import json

    path = Path(path)
    if path.suffix == ".parquet" or not path.exists():  # Parquet reads as fast as a cache
        return read_prices_skipping(path, repair, what, skip_bad)
    files = csv_files(path, what) if path.is_dir() else [path]
    digest = hashlib.blake2b(f"{CACHE_VERSION}|{repair}|{skip_bad}".encode(), digest_size=16)
    for f in files:
        digest.update(f"|{f.name}|".encode())
        digest.update(f.read_bytes())
    stem = Path(cache_dir) / "prices" / digest.hexdigest()
    table, meta = stem.with_suffix(".parquet"), stem.with_suffix(".json")
    if table.exists() and meta.exists():
        kept = json.loads(meta.read_text())
        parts = pd.read_parquet(table).groupby("series_id", sort=True, observed=True)
        series = {str(k): v.drop(columns="series_id").set_index("date").dropna(axis=1, how="all")
                  for k, v in parts}
        return series, kept["repairs"], [tuple(b) for b in kept["bad"]]
    series, repairs, bad = read_prices_skipping(path, repair, what, skip_bad)
    whole = pd.concat([f.reset_index().assign(series_id=k) for k, f in series.items()])
    atomic_write(table, lambda tmp: whole.to_parquet(tmp, index=False))
    atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps({"repairs": repairs,
                                                                     "bad": bad})))
    return series, repairs, bad


def csv_files(folder: Path, what: str = "data") -> list[Path]:
    """The CSV files directly in `folder` (.csv in any case); what else is there, sub-folders
    included, is named in a warning, so nothing is left out without a word."""
    files, skipped = [], []
    for p in sorted(folder.rglob("*")):
        if p.is_dir():
            continue
        if p.parent == folder and p.suffix.lower() == ".csv":
            files.append(p)
        else:
            why = "in a sub-folder" if p.parent != folder else "not a .csv file"
            skipped.append(f"{p.relative_to(folder)} ({why})")
    if skipped:
        shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10
                                           else "")
        log.warning("%s: read %d CSV file(s) in %s; skipped %d: %s", what, len(files), folder,
                    len(skipped), shown)
    if not files:
        raise PriceDataError(f"{what}: no .csv files directly in {folder}"
                             + (f" (skipped: {shown})" if skipped else ""))
    return files


# --- yfinance -------------------------------------------------------------------------------

def cache_path(cache_dir: str | Path, ticker: str, interval: str) -> Path:
    return Path(cache_dir) / f"{ticker.upper()}_{interval}.csv"


def split_download(frame: pd.DataFrame, tickers: list[str]) -> dict[str, pd.DataFrame]:
    """Reshape yfinance's frame (columns (Price, Ticker), or flat for one ticker)
    into one Yahoo-style frame per ticker, with columns Open..Volume."""
    out = {}
    for ticker in tickers:
        if isinstance(frame.columns, pd.MultiIndex):
            level = list(frame.columns.names).index("Ticker") if "Ticker" in frame.columns.names \
                else 1
            if ticker not in frame.columns.get_level_values(level):
                continue
            one = frame.xs(ticker, axis=1, level=level)
        else:
            one = frame
        one = one.dropna(how="all")
        if not one.empty:
            one.index = pd.DatetimeIndex(one.index).tz_localize(None).normalize()
            one.index.name = "Date"
            out[ticker] = one[[c for c in ("Open", "High", "Low", "Close", "Adj Close", "Volume")
                               if c in one.columns]]
    return out


def _download(tickers: list[str], start, end, interval: str) -> dict[str, pd.DataFrame]:
    """One yfinance call for `tickers`; {ticker: Yahoo-style frame} of those it got.
    yfinance's own logging of failures is kept quiet: the caller says what failed."""
    import warnings

    import yfinance as yf  # imported here: only downloads need it

    quiet = logging.getLogger("yfinance")
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = yf.download(tickers, start=start or None, end=end or None,
                                interval=interval, auto_adjust=False, progress=False,
                                threads=False)
    finally:
        quiet.setLevel(level)
    return split_download(frame if frame is not None else pd.DataFrame(), tickers)


def download_prices(tickers: list[str], start: str | None, end: str | None, interval: str,
                    cache_dir: str | Path, refresh: bool = False,
                    repair: str = "none") -> tuple[dict[str, pd.DataFrame], list]:
    """Prices for `tickers` from Yahoo through yfinance, cached one CSV per ticker
    and interval under `cache_dir`. A cached ticker is read from disk (filtered to
    start..end) unless `refresh`; the rest are downloaded in one call."""
    need = [t for t in tickers if refresh or not cache_path(cache_dir, t, interval).exists()]
    if need:
        fetched = _download(need, start, end, interval)
        missing = [t for t in need if t not in fetched]
        if missing:
            cached = [t for t in missing if cache_path(cache_dir, t, interval).exists()]
            raise PriceDataError(
                f"tickers: no data for {', '.join(map(repr, missing))} from Yahoo (offline, or "
                f"unknown ticker); "
                + (f"the cache of {', '.join(cached)} is kept: drop refresh=true to use it"
                   if cached else f"nothing cached at "
                   f"{', '.join(str(cache_path(cache_dir, t, interval)) for t in missing)}")
                + "; or pass data=PATH to train on a Yahoo-style CSV file or folder instead")
        for ticker in need:
            atomic_write(cache_path(cache_dir, ticker, interval),
                         lambda tmp, t=ticker: fetched[t].to_csv(tmp, date_format="%Y-%m-%d"))
    series, repairs = {}, []
    for ticker in tickers:
        frame, fixed = read_price_csv(cache_path(cache_dir, ticker, interval), repair)
        series[ticker] = frame.loc[start or None:end or None]
        repairs += fixed
    return series, repairs


# --- features and targets -------------------------------------------------------------------

EWMA_DECAY = 0.94  # RiskMetrics' daily decay: a trailing volatility any series has
SEED_DAYS = 22  # the EWMA starts from the mean square of the first month's returns
YEAR_DAYS = 252  # trading days
VOL_FLOOR = 1e-5  # a daily volatility below this (a price that never moves) counts as this


SEASONS = {"quarter": (57, 66), "half_year": (120, 132), "year": (245, 258)}  # lags, days
LONG_DAYS = 1000  # about four years
HAR_DAYS = {"week": 5, "month": 22}  # the windows of HAR's realised volatilities
SCALE_FREE = ["return_over_vol", "range_over_vol", "log_vol_over_year_vol",
              *(f"big_move_{k}_ago" for k in SEASONS), "log_range_over_return_var",
              "log_tail_weight", "log_year_vol_over_4y_vol",
              *(f"log_{k}_vol_over_vol" for k in HAR_DAYS)]


def feature_names(has_volume: bool, scale_free: bool = False) -> list[str]:
    first = SCALE_FREE if scale_free else ["log_return", "log_range"]
    return first + (["log_volume_change"] if has_volume else [])


def price_features(prices, use_volume: bool) -> np.ndarray:
    """Per-step features, float32 [..., T-1, F], from a price frame or a dict of arrays
    (`adj_close`, `high`, `low`, `volume`; [..., T]: several series of one length at
    once): the log return of the adjusted close, the log high/low range, and the log
    volume change (volume + 1, so a zero-volume day stays finite). Step t uses prices up
    to day t+1."""
    def col(name):
        return np.asarray(prices[name], np.float64)

    cols = [np.diff(np.log(col("adj_close"))), np.log(col("high") / col("low"))[..., 1:]]
    if use_volume:
        cols.append(np.diff(np.log1p(col("volume"))))
    return np.stack(cols, axis=-1).astype(np.float32)


def ewma_seed(returns: np.ndarray) -> float:
    """The EWMA variance before a series' first return: the mean square of its first
    SEED_DAYS returns."""
    return float((np.asarray(returns[:SEED_DAYS], np.float64) ** 2).mean())


def ewma_variance(returns: np.ndarray, before: float | None = None) -> np.ndarray:
    """v_t = λ v_(t-1) + (1 - λ) r_t^2 (r_t included), from v before the first return
    (`before`; by default `ewma_seed`)."""
    from scipy.signal import lfilter

    before = ewma_seed(returns) if before is None else before
    r2 = np.asarray(returns, np.float64) ** 2
    return lfilter([1 - EWMA_DECAY], [1, -EWMA_DECAY], r2, zi=[EWMA_DECAY * before])[0]


def trailing_vol(returns: np.ndarray, before: float | None = None) -> np.ndarray:
    """The EWMA volatility s_t = sqrt(v_t) (`ewma_variance`); at least VOL_FLOOR."""
    return np.maximum(np.sqrt(ewma_variance(returns, before)), VOL_FLOOR)


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of the last `window` values at each step (of all there are, before)."""
    total = np.concatenate([[0.0], np.cumsum(values)])
    n = np.minimum(np.arange(1, len(values) + 1), window)
    return (total[1:] - total[np.arange(1, len(values) + 1) - n]) / n


def scale_free(features: np.ndarray, v_before: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Features that mean the same for a bond fund and a biotech stock, from the past only
    (SCALE_FREE): the log return and range over the trailing volatility before the day
    (s_(t-1)); log(s_t / the past year's realised volatility); the largest squared
    standardised return a quarter, half a year and a year ago (earnings come quarterly);
    the past year's mean squared range over its mean squared return, and its mean fourth
    power of standardised returns (tails); log(the past year's volatility / the past four
    years'); log(the realised volatility of the past week and month / s_t), HAR's
    horizons; then the columns after the range as they are (the volume change, and the
    market's inputs: data_loaders/market.py). From `price_features` [T, F] of one series;
    returns them [T, F] and s [T], by which targets are divided.

    With `v_before` (the EWMA variance at the step before the first row) the rows
    continue a series that started earlier: exact from row CONTEXT_DAYS on, the rows
    before only feed the windows (a stream's carried context, models/stream.py)."""
    r, rng = features[:, 0].astype(np.float64), features[:, 1].astype(np.float64)
    s = trailing_vol(r, v_before)
    first = s[:1] if v_before is None else np.maximum(np.sqrt([v_before]), VOL_FLOOR)
    before = np.concatenate([first, s[:-1]])
    z2 = (r / before) ** 2
    def past(days):  # the realised volatility of the last `days` returns; s until there
        vol = realised_vol(r, days)
        return np.maximum(np.where(np.isnan(vol), s, vol), VOL_FLOOR)

    year = past(YEAR_DAYS)
    square, tiny = trailing_mean(r ** 2, YEAR_DAYS), VOL_FLOOR ** 2
    cols = [r / before, rng / before, np.log(s / year),
            *(np.log1p(_lagged_max(z2, *lags)) for lags in SEASONS.values()),
            np.log(np.maximum(trailing_mean(rng ** 2, YEAR_DAYS), tiny) / np.maximum(square, tiny)),
            np.log1p(trailing_mean(z2 ** 2, YEAR_DAYS)),
            0.5 * np.log(np.maximum(square, tiny) / np.maximum(trailing_mean(r ** 2, LONG_DAYS),
                                                               tiny)),
            *(np.log(past(days) / s) for days in HAR_DAYS.values()),
            *features[:, 2:].T]
    return np.stack(cols, axis=-1).astype(np.float32), s


CONTEXT_DAYS = LONG_DAYS  # the most steps back any scale-free feature reads


def _lagged_max(values: np.ndarray, first: int, last: int) -> np.ndarray:
    """At each step t the largest of values[t - last .. t - first] (0 before there are any)."""
    out = np.zeros(len(values))
    for lag in range(first, min(last, len(values) - 1) + 1):
        out[lag:] = np.maximum(out[lag:], values[:-lag])
    return out


def realised_vol(returns: np.ndarray, window: int) -> np.ndarray:
    """sqrt(mean r^2) over the `window` returns ending at each step; NaN before."""
    sq = np.concatenate([[0.0], np.cumsum(np.asarray(returns, np.float64) ** 2)])
    out = np.full(len(returns), np.nan)
    out[window - 1:] = np.sqrt((sq[window:] - sq[:-window]) / window)
    return out


def price_targets(returns: np.ndarray, target: str, horizon: int) -> np.ndarray:
    """Targets per step t, float32 [T, out], NaN where the future is not there yet.
    returns: the next `horizon` log returns r[t+1..t+H] (out = H);
    volatility: realised volatility sqrt(mean r^2) over r[t+1..t+H] (out = 1)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    r = np.asarray(returns, np.float64)
    n = len(r)
    if target == "returns":
        out = np.full((n, horizon), np.nan)
        for h in range(1, horizon + 1):
            out[: n - horizon, h - 1] = r[h: n - horizon + h]
    else:
        out = np.full((n, 1), np.nan)
        future = realised_vol(r, horizon)  # ends at t+H
        out[: n - horizon, 0] = future[horizon:]
    return out.astype(np.float32)
