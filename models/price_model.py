"""The MLflow pyfunc that serves a price model from raw price histories.

Stored as models/served.py stores every model; the class comes from code
(`price_entry.py`). The model computes features, windows and normalisation itself
with the same functions training used, so a client sends prices, never features.

Request: one row per series. Array columns `close` (the adjusted close), `high`,
`low` and, when the model was trained with volume, `volume`; when it was trained with a
market table, `market_vol_ratio`, `market_shock` and `market_move` (the table's values at
each price: data_loaders/market.py); optional `series_id` (string) and `dates` (array of strings,
one per price).
Params: `mode` = `last` (the forecast after the last price, default), `rolling` (a
forecast at every price that has a full lookback behind it) or `stream` (as rolling,
continuing the series from its `state`; see below); `last_only` (stream: each series'
last forecast and state only, one row per series, as a batch scorer keeps).
Streaming: a row sends its series' new prices (and dates) and the `state` the previous
response returned for it (none: the series starts here, with at least `first_prices()`
prices). The response has a forecast at every new price, `step` counted from the
series' first price, and the series' new `state` on its last row (models/stream.py):
a series sent in pieces of any sizes gets what one `rolling` pass over it gives.
Response: one row per forecast: `series_id`, `step` (index of the price the
forecast is made at), `date` (`dates[step]`, empty when no dates were sent) and
the forecast columns (`return_h1..hH`, or `volatility_hH`), each followed, for a model
trained with loss=gaussian, by its `_scale` and, for gaussian and quantile, by its
quantiles (`volatility_h5_q5`, `volatility_h5_q95`: models/heads.py).
Checks: prices finite and in SANE ranges, `high` >= `low`, `dates` ISO and strictly
increasing, `series_id` a string of at most 256 characters; each failure is a 400
naming the row, the column and the problem.
Limits (`limits()`): at most MAX_ROWS series, MAX_PRICES prices and, in rolling mode,
MAX_RESPONSE_VALUES values in the response (fewer forecasts for a windowed model with a
long lookback) per request, checked from the request's size before any work.
"""

from __future__ import annotations

import calendar
import itertools
import warnings

import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from data_loaders.market import MARKET_FEATURES, market_columns
from data_loaders.market import MOST as MOST_MARKET
from data_loaders.prices import (
    CONTEXT_DAYS,
    SEED_DAYS,
    ewma_seed,
    ewma_variance,
    price_features,
    scale_free,
)
from data_loaders.sequences import Normaliser
from models import stream
from models.heads import column_names, columns, denormalise, rescale
from models.networks import carry, forecasts, state_bounds, state_size
from models.served import ServedModel, bad, cell, missing, no_state, numbers, row_id, sent_id, short

MODES = ("last", "rolling", "stream")
# Request limits, set so that the largest request allowed finishes well inside MLflow's
# 60 s scoring timeout on two cores with well under 1 GB of memory (bench/rolling_forecasts.py).
MAX_ROWS = 1_000  # series
MAX_PRICES = 1_000_000  # all series together
MAX_RESPONSE_VALUES = 1_000_000  # rolling: rows x columns of the response, which MLflow
# turns into one dict per row before writing JSON: 250,000 rows of a one-forecast model
# (4 columns); 10^6 of those left the server 14 % above idle, 250,000 rows of a gaussian
# volatility model (10 columns) 10.6 %
MAX_WINDOW_STEPS = 64_000_000  # rolling forecasts x lookback, for a windowed model
SANE = {"price": (1e-6, 1e9), "volume": (0.0, 1e15)}
YEARS = (np.datetime64("1800-01-01"), np.datetime64("2300-01-01"))  # dates outside: a typo


def output_names(target: str, horizon: int) -> list[str]:
    if target == "volatility":
        return [f"volatility_h{horizon}"]
    return [f"return_h{h}" for h in range(1, horizon + 1)]


def price_columns(spec: dict) -> list[str]:
    return ["close", "high", "low"] + (["volume"] if "log_volume_change" in spec["features"]
                                       else [])


def market_columns_of(spec: dict) -> list[str]:
    """The market table's columns a model reads at each price (data_loaders/market.py)."""
    return [name for name in MARKET_FEATURES if name in spec["features"]]


def request_row(frame: pd.DataFrame, series_id: str, columns: list[str],
                market: pd.DataFrame | None = None) -> dict:
    """The request row for a price frame (as the loaders return it): what a client sends;
    with a market table, a model trained with one also gets its values at each price."""
    source = {"close": "adj_close", "high": "high", "low": "low", "volume": "volume"}
    row = {c: frame[source[c]].astype(float).tolist() for c in columns}
    if market is not None:
        row.update(market_columns(market, frame.index, f"market, series {series_id}"))
    if isinstance(frame.index, pd.DatetimeIndex):
        row["dates"] = [str(d)[:10] for d in frame.index]
    row["series_id"] = str(series_id)
    return row


def _numbers(row: dict, name: str, i: int) -> np.ndarray:
    """One price column of one row as float64: numbers only (no "1.5", no true)."""
    if missing(row.get(name)):
        raise bad(f"row {i}: missing required column '{name}'")
    return numbers(row[name], f"row {i}, column '{name}'")


def _check_values(columns: dict[str, list[np.ndarray]]) -> None:
    """Every price a number in SANE range and high >= low, checked for all rows at once (a
    few reductions instead of a few per row); the first failure is named by row and position."""
    starts = np.cumsum([0] + [len(a) for a in columns["close"]])
    flat = {name: np.concatenate(arrs) for name, arrs in columns.items()}

    def where(at: int) -> tuple[int, int]:
        i = int(np.searchsorted(starts, at, side="right")) - 1
        return i, at - starts[i]

    for name, values in flat.items():
        low, high = SANE["volume" if name == "volume" else "price"]
        if values.size and not (low <= values.min() and values.max() <= high):  # NaN fails too
            outside = ~((values >= low) & (values <= high))
            i, _ = where(np.flatnonzero(outside)[0])
            _value_error(columns[name][i], name, i, low, high)
    below = np.flatnonzero(flat["high"] < flat["low"])
    if len(below):
        i, k = where(below[0])
        raise bad(f"row {i}, column 'high': {columns['high'][i][k]} is below 'low' "
                  f"({columns['low'][i][k]}) at position {k}")


def _check_market(names: list[str], market: list[np.ndarray | None]) -> None:
    """Every market value a finite number within what a market table can hold."""
    for i, values in enumerate(market):
        if values is None or not len(values):
            continue
        if np.abs(values).max() <= MOST_MARKET:
            continue  # (NaN fails the test, so it is looked at below)
        k, j = (int(a[0]) for a in np.nonzero(~(np.abs(values) <= MOST_MARKET)))
        raise bad(f"row {i}, column '{names[j]}': expected a finite number within "
                  f"+-{MOST_MARKET:g}, got {values[k, j]} at position {k}")


def _raw(prices: dict, market: np.ndarray | None) -> np.ndarray:
    """The per-step features the model's inputs are made from: `price_features` of the
    prices ([..., T] each), then the market values sent at the last T-1 prices (the first
    price has no return before it, so its market value is not read)."""
    own = price_features(prices, "volume" in prices)
    if market is None:
        return own
    steps = own.shape[-2]
    return np.concatenate([own, market[..., market.shape[-2] - steps:, :].astype(np.float32)],
                          axis=-1)


def _value_error(arr: np.ndarray, name: str, i: int, low: float, high: float):
    """The first bad value of a price column, named."""
    nonfinite = np.flatnonzero(~np.isfinite(arr))
    if len(nonfinite):
        raise bad(f"row {i}, column '{name}': NaN or infinity at position {nonfinite[0]}")
    k = np.flatnonzero((arr < low) | (arr > high))[0]
    value = float(arr[k])
    rule = (f"must lie in [{low:g}, {high:g}]" if value > 0 or (value == 0 and name == "volume")
            else "must be >= 0" if name == "volume" else "must be > 0")
    raise bad(f"row {i}, column '{name}': {rule}, got {value} at position {k}")


def _dates(rows: list[dict], lengths: list[int]) -> list[list | None]:
    """The `dates` of every row (None where not sent), checked: ISO date strings, one
    per price, strictly increasing. Checked for all rows at once: cheaper per date."""
    given = {}
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        values = row.get("dates")
        if missing(values):
            continue
        if isinstance(values, np.ndarray) and values.ndim == 1:
            values = values.tolist()
        if not isinstance(values, list | tuple):  # np.ndim would copy a list: slow
            raise bad(f"row {i}, column 'dates': expected an array of ISO date strings, "
                      f"got {type(values).__name__}")
        if len(values) != n:
            raise bad(f"row {i}, column 'dates': {len(values)} dates for {n} prices "
                      "(one date per price)")
        given[i] = values
    if given:
        _check_dates(given)
    return [given.get(i) for i in range(len(rows))]


def _check_dates(given: dict[int, list]) -> None:
    """Each row's dates ISO strings of years 1800-2299, strictly increasing; the first
    failure is named by row and position."""
    try:  # the quickest test that every date is a string
        text = "|".join(itertools.chain(*given.values(), [""]))  # a "|" after each
    except TypeError:
        i, k = next((i, k) for i, values in given.items() for k, v in enumerate(values)
                    if not isinstance(v, str))
        raise bad(f"row {i}, column 'dates': position {k}: expected an ISO date "
                  f"string, got {short(given[i][k])}") from None
    starts = np.cumsum([0] + [len(v) for v in given.values()])
    rows_of = list(given)

    def where(at: int) -> tuple[int, int, list]:
        r = int(np.searchsorted(starts, at, side="right")) - 1
        return rows_of[r], at - starts[r], given[rows_of[r]]

    plain = _plain_dates(text, int(starts[-1]))
    if plain is None:
        readable, later = _read_dates(given, where)
    else:
        readable, later = plain
    later[starts[1:-1] - 1] = True  # the first date of a row need not follow the last row's
    bad_at = np.flatnonzero(~readable)
    order = np.flatnonzero(~later) + 1
    if len(bad_at) or len(order):
        unread = len(bad_at) and (not len(order) or bad_at[0] <= order[0])
        i, k, values = where(bad_at[0] if unread else order[0])
        at = f"row {i}, column 'dates': position {k}"
        if unread:
            raise bad(f"{at}: cannot read {short(values[k])} as an ISO date (YYYY-MM-DD, "
                      "years 1800-2299)")
        raise bad(f"{at}: {short(values[k])} is not after {short(values[k - 1])}; "
                  "dates must be strictly increasing (oldest first)")


def _read_dates(given: dict[int, list], where) -> tuple[np.ndarray, np.ndarray]:
    """Dates in any ISO 8601 form, by NumPy's reader: whether each is a day of YEARS and
    whether each is after the one before."""
    parsed = _iso_dates(list(given.values()))
    # NumPy reads "now" and "today" (any case) too: they come out as yesterday or later,
    # whatever the clock's time zone, so only such dates need a look
    recent = np.datetime64("today") - np.timedelta64(1, "D")
    for at in np.flatnonzero(parsed >= recent):
        _, k, values = where(at)
        if values[k].lower() in ("now", "today"):
            parsed[at] = np.datetime64("NaT")
    parsed[(parsed < YEARS[0]) | (parsed >= YEARS[1])] = np.datetime64("NaT")
    return ~np.isnat(parsed), np.diff(parsed) > np.timedelta64(0)


def _dates_at(dates: list | None, steps: np.ndarray) -> np.ndarray:
    """The dates sent at these steps ("" when none were sent)."""
    if dates is None:
        return np.full(len(steps), "", object)
    if len(steps) < 100:  # the usual last forecast: no copy of the whole list
        return np.array([dates[k] for k in steps], object)
    return np.asarray(dates, dtype=object)[steps]


def _plain_dates(text: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """`n` dates, each followed by "|", read when every one is a plain YYYY-MM-DD (the
    usual request; faster than NumPy's date reader): whether each is a day of YEARS, and
    whether each is after the one before. None when not all are plain. With digits and
    dashes at every place but each 11th, which is "|", no date can hold a "|": each has
    exactly 10 characters. Small integer arrays: no large temporary to allocate."""
    if len(text) != 11 * n or not text.isascii():
        return None
    chars = np.frombuffer(text.encode(), np.uint8).reshape(n, 11)
    num = [chars[:, k] - np.uint8(ord("0")) for k in (0, 1, 2, 3, 5, 6, 8, 9)]
    if any((d > 9).any() for d in num):  # (below "0" wraps round to above 9)
        return None
    if not all((chars[:, k] == ord(c)).all() for k, c in ((4, "-"), (7, "-"), (10, "|"))):
        return None
    year = ((num[0] * np.uint16(10) + num[1]) * np.uint16(10) + num[2]) * np.uint16(10) + num[3]
    month, day = num[4] * 10 + num[5], num[6] * 10 + num[7]
    ok = (year >= _YEARS[0]) & (year < _YEARS[1]) & (day >= 1) & (day <= _MONTH_DAYS[month])
    for k in np.flatnonzero((month == 2) & (day == 29)):
        ok[k] = calendar.isleap(int(year[k]))
    month_day = month * np.uint16(32) + day  # orders the days of a year
    later = (year[1:] > year[:-1]) | ((year[1:] == year[:-1]) & (month_day[1:] > month_day[:-1]))
    return ok, later


_YEARS = [int(str(y)[:4]) for y in YEARS]
_MONTH_DAYS = np.zeros(100, np.uint8)  # by the month's two digits; 0: no such month
_MONTH_DAYS[1:13] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]  # February 29: leap years


def _iso_dates(rows: list[list[str]]) -> np.ndarray:
    """Rows of ISO 8601 strings -> one datetime64[s] array (NumPy's reader, fast), NaT where
    one cannot be read. Row by row: a row's strings are still in the CPU's cache from the
    type check."""
    with warnings.catch_warnings():  # "...Z" or "+01:00": read as UTC, which orders them right
        warnings.simplefilter("ignore", UserWarning)  # DeprecationWarning before NumPy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.concatenate([_read_row(values) for values in rows])


def _read_row(values: list[str]) -> np.ndarray:
    try:
        return np.asarray(values, dtype="datetime64[s]")
    except ValueError:
        return np.array([_iso_date(v) for v in values], dtype="datetime64[s]")


def _iso_date(text: str) -> np.datetime64:
    try:
        return np.datetime64(text, "s")
    except ValueError:
        return np.datetime64("NaT")


def _continues(header: dict, sent: str, dates: list | None, i: int) -> None:
    """A streamed row continues its state's series: the same series_id (when both have
    one) and dates after the state's last date (when the state has one)."""
    stream.same_series(header, sent, i, "series ")
    if not header["date"]:
        return
    date = header["date"]
    last = _iso_date(date) if len(date) <= 40 and date.isprintable() else np.datetime64("NaT")
    if np.isnat(last) or not YEARS[0] <= last < YEARS[1] or date.lower() in ("now", "today"):
        raise bad(f"row {i}, column 'state': its last date {short(date)} is not a date: "
                  "the state is not one this model returned")
    if dates is None:
        raise bad(f"row {i}, column 'dates': this series' state ends at {date}: send the "
                  "new prices' dates")
    if _iso_date(dates[0]) <= last:
        raise bad(f"row {i}, column 'dates': position 0: {short(dates[0])} does not continue "
                  f"the series, whose state ends at {date}")


# the most a carried feature can be: a log return, range or volume change between prices
# (and volumes) within SANE
MOST_FEATURE = float(np.log(SANE["volume"][1] + 1))


def _impossible(arrays: dict, prices: dict, header: dict, bounds: np.ndarray) -> str | None:
    """What in a decoded state no model run can have produced, or None."""
    last = dict(zip(prices, arrays["last"], strict=True))
    for name, value in last.items():
        low, high = SANE["volume" if name == "volume" else "price"]
        if not low <= value <= high:
            return f"its last {'close' if name == 'adj_close' else name} is {value:g}"
    if last["high"] < last["low"]:
        return "its last high is below its last low"
    if (np.abs(arrays["context"]) > MOST_FEATURE).any():
        return "its features are beyond any prices'"
    if not 0 <= arrays.get("v_before", [0])[0] <= MOST_FEATURE ** 2:
        return "its volatility is beyond any prices'"
    return stream.unreachable(arrays, bounds, header["steps"])


class PriceForecaster(ServedModel):
    entry = "price_entry.py"
    unit = "series"
    max_rows = MAX_ROWS
    size_column = "close"
    id_column = "series_id"
    carried = ("state",)

    @staticmethod
    def signature(spec: dict) -> ModelSignature:
        # Inputs are typed Any: MLflow would enforce an Array column cell by cell through
        # pandas (about 25 ms per 100 series of 500 prices) and turn ["a"] into "['a']";
        # the model's own checks are stricter and name the row, the column and the position.
        # Nothing is required here either: the model names a missing column by row.
        inputs = [ColSpec(AnyType(), c, required=False)
                  for c in [*price_columns(spec), *market_columns_of(spec), "series_id",
                            "dates", "state"]]
        outputs = [ColSpec(DataType.string, "series_id"), ColSpec(DataType.long, "step"),
                   ColSpec(DataType.string, "date")]
        outputs += [ColSpec(DataType.double, c) for c in column_names(spec)]
        outputs += [ColSpec(DataType.string, "state", required=False)]  # mode=stream
        params = ParamSchema([ParamSpec("mode", DataType.string, "last"),
                              ParamSpec("last_only", DataType.boolean, False)])
        return ModelSignature(Schema(inputs), Schema(outputs), params)

    def setup(self) -> None:
        self.x_norm = Normaliser.from_dict(self.normaliser["x"])
        self.y_norm = Normaliser.from_dict(self.normaliser["y"])
        self.stateful = self.spec["bptt"] == "truncated"
        self.scale_free = bool(self.spec.get("scale_free"))
        self.bounds = None
        width = len(price_columns(self.spec))
        arrays = {"last": ("float64", width, None)}  # the last prices: the next return's base
        if self.scale_free:  # the EWMA variance before the context's first row
            arrays["v_before"] = ("float64", 1, None)
        self.market = market_columns_of(self.spec)
        # the last per-step features: the series' own, then the market's as sent
        arrays["context"] = ("float32", width - 1 + len(self.market), "rows")
        if self.stateful:
            arrays["hidden"] = ("float32", state_size(self.net), None)
            self.bounds = state_bounds(self.net)
        # context: what the features read back (scale-free) and a window (windowed models)
        rows = (CONTEXT_DAYS if self.scale_free else 0) + (0 if self.stateful else
                                                          self.spec["lookback"])
        self.layout = stream.Layout(self.identity, arrays, rows, self.spec["lookback"])

    def first_prices(self) -> int:
        """The fewest prices a series starts with: a full lookback and, for a scale-free
        model, the month its trailing volatility starts from."""
        return self.spec["lookback"] + 1 + (SEED_DAYS if self.scale_free else 0)

    def limits(self) -> dict[str, int]:
        """What one request may ask for. A rolling forecast is a response row of
        `series_id`, `step`, `date` and the forecast columns; a windowed model's costs a
        pass over `lookback` steps, a stateful one's a single step."""
        steps = 1 if self.stateful else self.spec["lookback"]
        row = 3 + len(column_names(self.spec))
        return {"prices": MAX_PRICES,
                "rolling forecasts": min(MAX_RESPONSE_VALUES // row, MAX_WINDOW_STEPS // steps)}

    def size(self, row: dict) -> float:
        return len(row["close"]) if hasattr(row.get("close"), "__len__") else 0

    def budget(self) -> float:
        return min(self.limits().values())  # prices; a series has fewer rolling forecasts

    def check_cost(self, rows: list[dict], mode: str) -> None:
        """Refuse a request over the limits before any work, from its size alone."""
        lengths = [self.size(r) for r in rows]
        cost = {"prices": sum(lengths)}
        if mode == "rolling":
            cost["rolling forecasts"] = sum(max(0, n - self.spec["lookback"]) for n in lengths)
        elif mode == "stream":  # a series' first piece as rolling, then one per price
            cost["rolling forecasts"] = sum(
                n if not missing(cell(r.get("state"))) else max(0, n - self.spec["lookback"])
                for n, r in zip(lengths, rows, strict=True))
        for what, n in cost.items():
            limit = self.limits()[what]
            if n > limit:
                how = (f"split the series across {-(-n // limit)} or more requests"
                       if what == "prices" else
                       f"send a long series in parts of at most {limit:,} forecasts, each part "
                       f"with the {self.spec['lookback']} prices before its first forecast"
                       if mode == "rolling" else
                       f"stream a long series in pieces of at most {limit:,} prices")
                raise bad(f"request has {n:,} {what}; the limit is {limit:,} per request: {how}")

    def _series(self, rows: list[dict], needs: list[int] | None = None) -> list[dict]:
        """The request rows, checked: prices and ids (dates: `_dates`); `needs`: the fewest
        prices of each row (by default lookback + 1)."""
        series = []
        for i, row in enumerate(rows):
            cols = {name: _numbers(row, name, i) for name in price_columns(self.spec)}
            lengths = {k: len(v) for k, v in cols.items()}
            if len(set(lengths.values())) > 1:
                raise bad(f"row {i}: price arrays differ in length: {lengths}")
            need = self.spec["lookback"] + 1 if needs is None else needs[i]
            if need == 1 and lengths["close"] == 0:
                raise bad(f"row {i}, column 'close': no new prices: a streamed piece has at "
                          "least one")
            if lengths["close"] < need:
                raise bad(f"row {i}, column 'close': {lengths['close']} prices is shorter "
                          f"than the {need} this model needs (lookback "
                          f"{self.spec['lookback']} + 1"
                          + (f" + the {SEED_DAYS} days its volatility starts from)"
                             if need > self.spec["lookback"] + 1 else ")")
                          + ("" if needs is None else " to start a series"))
            market = {name: _numbers(row, name, i) for name in self.market}
            if any(len(v) != lengths["close"] for v in market.values()):
                raise bad(f"row {i}: market arrays differ in length from the prices: "
                          f"{ {k: len(v) for k, v in market.items()} } for "
                          f"{lengths['close']} prices (one value per price)")
            series.append({"prices": cols, "id": row_id(row, "series_id", i),
                           "market": np.stack([market[k] for k in self.market], axis=-1)
                           if market else None})
        _check_values({name: [s["prices"][name] for s in series]
                       for name in price_columns(self.spec)})
        _check_market(self.market, [s["market"] for s in series])
        for s in series:
            s["prices"]["adj_close"] = s["prices"].pop("close")
        return series

    def _features(self, series: list[dict], mode: str) -> tuple[list[torch.Tensor], list]:
        """The normalised features of each series, and each step's scale (a scale-free
        model's trailing volatility; None otherwise). The last forecast of a windowed model
        that is not scale-free reads only the last lookback + 1 prices: those of all series
        in one call (a trailing volatility reads them all)."""
        raw = None
        if self.scale_free:
            raw = [scale_free(_raw(s["prices"], s["market"])) for s in series]
        elif mode == "rolling" or self.stateful:
            raw = [(_raw(s["prices"], s["market"]), None) for s in series]
        if raw is not None:
            return [torch.as_tensor(self.x_norm.transform(x)) for x, _ in raw], [s for _, s in raw]
        keep = self.spec["lookback"] + 1
        last = {k: np.stack([s["prices"][k][-keep:] for s in series]) for k in series[0]["prices"]}
        market = np.stack([s["market"][-keep:] for s in series]) if self.market else None
        xs = list(torch.as_tensor(self.x_norm.transform(_raw(last, market))))
        return xs, [None] * len(xs)

    def forecast(self, rows: list[dict], mode: str) -> pd.DataFrame:
        """The forecasts of checked rows, all series through the network together."""
        series = self._series(rows)
        dates = _dates(rows, [len(s["prices"]["adj_close"]) for s in series])
        lookback = self.spec["lookback"]
        xs, scales = self._features(series, mode)
        anchors = [np.arange(lookback - 1 if mode == "rolling" else len(x) - 1, len(x))
                   for x in xs]
        preds = forecasts(self.net, xs, anchors, self.stateful, lookback)
        values = self._values(preds, [s[a] if self.scale_free else None
                                      for s, a in zip(scales, anchors, strict=True)])
        # feature step t is known at price t+1 (counted from the first price sent)
        steps = [a + len(s["prices"]["adj_close"]) - len(x)
                 for a, s, x in zip(anchors, series, xs, strict=True)]
        return self._frame(series, values, steps,
                           [_dates_at(d, st) for d, st in zip(dates, steps, strict=True)])

    def _values(self, preds: list[torch.Tensor], scales: list) -> dict[str, np.ndarray]:
        """The forecast columns of the network's outputs [N_i, out] per series, in price
        units (a scale-free model's: times each step's trailing volatility in `scales`)."""
        values = denormalise(torch.cat(preds).numpy(), self.spec, self.y_norm)
        if self.scale_free:
            values = rescale(values, np.concatenate(scales))
        return columns(self.spec, values)

    @staticmethod
    def _frame(series: list[dict], values: dict[str, np.ndarray], steps: list[np.ndarray],
               dates: list[np.ndarray]) -> pd.DataFrame:
        """The response: a row per forecast, `steps` and `dates` per series; a non-finite
        forecast is a request error naming its row."""
        counts = [len(st) for st in steps]
        bad_rows = np.flatnonzero(~np.isfinite(np.column_stack(list(values.values()))).all(1))
        if len(bad_rows):
            i = int(np.searchsorted(np.cumsum(counts), bad_rows[0], side="right"))
            raise bad(f"row {i}: the model produced a non-finite forecast (prices far outside "
                      "what it was trained on?)")
        out = {"series_id": np.repeat(np.array([s["id"] for s in series], object), counts),
               "step": np.concatenate(steps), "date": np.concatenate(dates)}
        out.update({name: v.astype(np.float64) for name, v in values.items()})
        return pd.DataFrame(out)

    def serve(self, model_input, params: dict) -> pd.DataFrame:
        mode = params.get("mode") or "last"
        if mode not in MODES:
            raise bad(f"params.mode must be one of {list(MODES)}, got {mode!r}")
        rows = self.rows(model_input)
        if mode != "stream":
            no_state([r.get("state") for r in rows], mode)
        last_only = params.get("last_only") or False
        if last_only not in (True, False) or last_only and mode != "stream":
            raise bad(f"params.last_only is true or false, and true only with mode 'stream'; "
                      f"got {last_only!r} with mode {mode!r}")
        self.check_cost(rows, mode)
        if mode != "stream":
            return self.forecast(rows, mode)
        out = self.stream(rows)
        return out[out.state != ""].reset_index(drop=True) if last_only else out

    def stream(self, rows: list[dict]) -> pd.DataFrame:
        """Forecasts at every new price of each row, continuing from its state, and the
        series' new state on its last row (module docstring)."""
        states = [None if missing(cell(r.get("state"))) else
                  stream.decode(cell(r["state"]), self.layout, i) for i, r in enumerate(rows)]
        series = self._series(rows, [1 if s else self.first_prices() for s in states])
        dates = _dates(rows, [len(s["prices"]["adj_close"]) for s in series])
        ids = [sent_id(r, "series_id") for r in rows]
        for i, state in enumerate(states):
            if state:
                _continues(state[0], ids[i], dates[i], i)
                if why := _impossible(state[1], series[i]["prices"], state[0], self.bounds):
                    raise bad(f"row {i}, column 'state': {why}: the state is not one this "
                              "model returned")
        parts = [self._continue(s, state) for s, state in zip(series, states, strict=True)]
        hidden = [None] * len(parts)
        if self.stateful:
            hidden = [torch.as_tensor(state[1]["hidden"]) if state else None for state in states]
            outs, hidden = carry(self.net, [p["x"][p["new"]:] for p in parts], hidden)
            preds = [o[p["first"] - p["new"]:] for o, p in zip(outs, parts, strict=True)]
        else:
            preds = forecasts(self.net, [p["x"] for p in parts],
                              [np.arange(p["first"], len(p["x"])) for p in parts], False,
                              self.spec["lookback"])
        values = self._values(preds, [p["scale"][p["first"]:] if self.scale_free else None
                                      for p in parts])
        counts = [len(p["x"]) - p["first"] for p in parts]  # the last `count` prices sent
        out = self._frame(
            series, values,
            [p["steps"] + 1 + np.arange(p["first"], len(p["x"])) - p["new"] for p in parts],
            [_dates_at(d, np.arange(len(s["prices"]["adj_close"]) - n,
                                    len(s["prices"]["adj_close"])))
             for s, d, n in zip(series, dates, counts, strict=True)])
        out["state"] = ""
        out.loc[np.cumsum(counts) - 1, "state"] = [
            self._token(p, h, sent, d[-1] if d else "")
            for p, h, sent, d in zip(parts, hidden, ids, dates, strict=True)]
        return out

    def _continue(self, series: dict, state) -> dict:
        """One series' normalised features over its carried context and its new prices:
        `x` [context + new, F], `new` (where the new steps start), `first` (the first step
        forecast), `scale` (scale-free: s per step), and what its next state holds."""
        prices = series["prices"]
        steps, v_before = 0, None
        context = np.zeros((0, len(prices) - 1 + len(self.market)), np.float32)
        if state:
            steps, arrays = state[0]["steps"], state[1]
            prices = {k: np.concatenate([[arrays["last"][j]], v])
                      for j, (k, v) in enumerate(prices.items())}
            context, v_before = arrays["context"], arrays.get("v_before", [None])[0]
        new = _raw(prices, series["market"])
        raw = np.concatenate([context, new])
        if steps == len(context):  # nothing dropped yet: the features from the series' start
            v_before = None
        x, scale = scale_free(raw, v_before) if self.scale_free else (raw, None)
        keep = raw[-self.layout.max_rows:] if self.layout.max_rows else raw[:0]
        part = {"x": torch.as_tensor(self.x_norm.transform(x)), "scale": scale,
                "new": len(context), "steps": steps, "context": keep,
                "first": len(context) if state else self.spec["lookback"] - 1,
                "last": np.array([v[-1] for v in prices.values()])}
        if self.scale_free:  # the EWMA variance before the kept context's first row
            v = ewma_variance(raw[:, 0], v_before)
            dropped = len(raw) - len(keep)
            part["v_before"] = v[dropped - 1] if dropped else (
                ewma_seed(raw[:, 0]) if v_before is None else v_before)
        return part

    def _token(self, part: dict, hidden, series: str, date: str) -> str:
        arrays = {"last": part["last"], "context": part["context"]}
        if self.scale_free:
            arrays["v_before"] = np.array([part["v_before"]])
        if self.stateful:
            arrays["hidden"] = hidden.numpy()
        return stream.encode(self.layout, series, date,
                             part["steps"] + len(part["x"]) - part["new"], arrays)
