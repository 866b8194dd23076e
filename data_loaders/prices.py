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


def read_price_parquet(path: Path, repair: str = "none") -> tuple[dict[str, pd.DataFrame], list]:
    """A Parquet table of prices: one series, or several in a `series_id` column."""
    table = pd.read_parquet(path)
    table.columns = [_canonical(c) for c in table.columns]
    if "series_id" not in table:
        table = table.assign(series_id=path.stem)
    series, repairs = {}, []
    for name, part in table.groupby("series_id", sort=True):
        text = part.drop(columns="series_id").reset_index(drop=True)
        text = text.astype(str).apply(lambda c: c.str.replace(r"^(nan|NaT|None)$", "", regex=True))
        series[str(name)], fixed = parse_prices(text, path, repair)
        repairs += fixed
    return series, repairs


def read_prices(path: str | Path, repair: str = "none",
                what: str = "data") -> tuple[dict[str, pd.DataFrame], list]:
    """A CSV file (one series, named by the file stem), a folder of CSV files, or a
    Parquet file (one series, or several in a `series_id` column). Errors about the
    path name the parameter `what` that gave it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    if path.suffix == ".parquet":
        return read_price_parquet(path, repair)
    files = csv_files(path, what) if path.is_dir() else [path]
    series, repairs = {}, []
    for f in files:
        series[f.stem], fixed = read_price_csv(f, repair)
        repairs += fixed
    return series, repairs


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

def feature_names(has_volume: bool) -> list[str]:
    return ["log_return", "log_range"] + (["log_volume_change"] if has_volume else [])


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
