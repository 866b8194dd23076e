"""The price loader on the bundled real exports, bad rows, repairs and the yfinance cache."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_loaders import prices
from data_loaders.prices import PriceDataError, read_price_csv

DATA = Path(__file__).resolve().parents[1] / "data" / "prices"


@pytest.mark.parametrize("name, rows, first, last", [
    ("SPY", 2519, "2007-12-31", "2017-12-29"),
    ("AAPL", 3379, "2004-08-19", "2018-01-19"),
    ("GSPC", 5031, "1999-01-04", "2018-12-31"),  # M/D/YYYY dates, CRLF line ends
    ("MSFT", 7983, "1986-03-13", "2017-11-10"),  # no Adj Close, extra OpenInt column
])
def test_reads_every_bundled_variant(name, rows, first, last):
    frame, repairs = read_price_csv(DATA / f"{name}.csv")
    assert repairs == []
    assert len(frame) == rows
    assert str(frame.index[0].date()) == first and str(frame.index[-1].date()) == last
    assert frame.index.is_monotonic_increasing and frame.index.is_unique
    assert list(frame.columns) == ["open", "high", "low", "close", "adj_close", "volume"]
    assert frame.notna().all().all()


def test_missing_adj_close_falls_back_to_close():
    frame, _ = read_price_csv(DATA / "MSFT.csv")
    assert np.array_equal(frame["adj_close"], frame["close"])


def test_lowercase_headers_and_unnamed_index_column(tmp_path):
    raw = pd.read_csv(DATA / "SPY.csv")
    raw.columns = [c.lower() for c in raw.columns]
    raw.iloc[::-1].to_csv(tmp_path / "spy.csv")  # reversed, with pandas' unnamed index
    frame, _ = read_price_csv(tmp_path / "spy.csv")
    expected, _ = read_price_csv(DATA / "SPY.csv")
    pd.testing.assert_frame_equal(frame, expected)


def _broken(tmp_path, line: int, column: str, value: str) -> Path:
    """SPY.csv with one cell replaced; `line` is the file line (header = 1)."""
    raw = pd.read_csv(DATA / "SPY.csv", dtype=str)
    raw.loc[line - 2, column] = value
    path = tmp_path / "bad.csv"
    raw.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("column, value, problem", [
    ("Close", "abc", "cannot parse 'abc'"),
    ("Open", "", "missing value"),
    ("High", "-3.5", "non-positive price"),
    ("Adj Close", "0", "non-positive price"),
    ("Date", "31/31/2012", "cannot parse"),
    ("Volume", "-10", "negative volume"),
    ("Close", "1e999", "infinite value '1e999'"),  # found by tests/test_properties.py
    ("High", "inf", "infinite value 'inf'"),
])
def test_bad_cell_names_file_line_and_column(tmp_path, column, value, problem):
    path = _broken(tmp_path, 57, column, value)
    with pytest.raises(PriceDataError) as err:
        read_price_csv(path)
    msg = str(err.value)
    canonical = column.lower().replace(" ", "_")
    assert "bad.csv" in msg and "line 57" in msg and f"column '{canonical}'" in msg, msg
    assert problem in msg and "repair=drop" in msg


def test_duplicate_date_is_an_error(tmp_path):
    path = _broken(tmp_path, 11, "Date", "2008-01-11")  # line 10 holds 2008-01-11
    with pytest.raises(PriceDataError, match=r"line 11, column 'date': duplicate date 2008-01-11"):
        read_price_csv(path)


def test_repair_drop_removes_bad_rows_and_reports_them(tmp_path):
    path = _broken(tmp_path, 57, "Close", "abc")
    frame, repairs = read_price_csv(path, repair="drop")
    assert len(frame) == 2518
    assert repairs == ["bad.csv line 57, column 'close': cannot parse 'abc' -> row dropped"]


def test_repair_ffill_carries_the_last_good_value(tmp_path):
    path = _broken(tmp_path, 57, "Close", "")
    frame, repairs = read_price_csv(path, repair="ffill")
    good, _ = read_price_csv(DATA / "SPY.csv")
    assert len(frame) == 2519
    assert frame["close"].iloc[55] == good["close"].iloc[54]
    assert "forward-filled" in repairs[0]


def test_missing_required_column(tmp_path):
    pd.read_csv(DATA / "SPY.csv").drop(columns=["Low"]).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(PriceDataError, match=r"missing column\(s\) \['low'\]"):
        read_price_csv(tmp_path / "x.csv")


def test_features_are_log_return_range_and_volume_change():
    frame, _ = read_price_csv(DATA / "MSFT.csv")
    x = prices.price_features(frame, use_volume=True)
    assert x.shape == (len(frame) - 1, 3) and np.isfinite(x).all()  # zero-volume day included
    t = 100
    assert x[t, 0] == pytest.approx(np.log(frame.adj_close.iloc[t + 1] / frame.adj_close.iloc[t]))
    assert x[t, 1] == pytest.approx(np.log(frame.high.iloc[t + 1] / frame.low.iloc[t + 1]))
    assert x[t, 2] == pytest.approx(np.log1p(frame.volume.iloc[t + 1]) -
                                    np.log1p(frame.volume.iloc[t]), rel=1e-5)


def test_features_of_several_series_at_once_are_each_series_features():
    frame, _ = read_price_csv(DATA / "MSFT.csv")
    parts = [frame.iloc[s:s + 65] for s in (0, 700, 2000)]
    batch = {c: np.stack([p[c].to_numpy() for p in parts])
             for c in ["adj_close", "high", "low", "volume"]}
    together = prices.price_features(batch, use_volume=True)
    assert together.shape == (3, 64, 3)
    for got, part in zip(together, parts, strict=True):
        assert np.array_equal(got, prices.price_features(part, use_volume=True))


def test_targets_returns_and_volatility():
    r = np.array([0.01, -0.02, 0.03, 0.0, 0.01, -0.01])
    y = prices.price_targets(r, "returns", 2)
    assert np.allclose(y[0], [-0.02, 0.03]) and np.allclose(y[3], [0.01, -0.01])
    assert np.isnan(y[4:]).all() and not np.isnan(y[:4]).any()
    v = prices.price_targets(r, "volatility", 3)
    assert v.shape == (6, 1)
    assert v[0, 0] == pytest.approx(np.sqrt(np.mean(r[1:4] ** 2)))
    assert np.isnan(v[3:]).all()


# --- yfinance: no network here, so yf.download is replaced by a frame built in the test -------

def _yf_frame(tickers):
    """The shape yfinance 1.x returns: columns (Price, Ticker), a tz-aware date index."""
    spy, _ = read_price_csv(DATA / "SPY.csv")
    spy = spy.iloc[:30]
    cols = {}
    for field in ("Adj Close", "Close", "High", "Low", "Open", "Volume"):
        values = spy[field.lower().replace(" ", "_")].to_numpy()
        cols.update({(field, t): values * (1 if field == "Volume" else i + 1)
                     for i, t in enumerate(tickers)})
    frame = pd.DataFrame(cols, index=spy.index.tz_localize("America/New_York"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["Price", "Ticker"])
    return frame


def test_split_download_reshapes_multi_ticker_frame():
    out = prices.split_download(_yf_frame(["SPY", "AAPL"]), ["SPY", "AAPL", "MISSING"])
    assert set(out) == {"SPY", "AAPL"}
    assert list(out["AAPL"].columns) == ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
    assert out["AAPL"]["Close"].iloc[0] == pytest.approx(2 * out["SPY"]["Close"].iloc[0])
    assert out["SPY"].index.tz is None


def test_download_caches_then_reads_cache_and_refreshes(tmp_path, monkeypatch):
    import yfinance

    calls = []

    def fake_download(tickers, **kwargs):
        calls.append(list(tickers))
        return _yf_frame(tickers)

    monkeypatch.setattr(yfinance, "download", fake_download)
    first, _ = prices.download_prices(["SPY", "AAPL"], "", "", "1d", tmp_path)
    assert calls == [["SPY", "AAPL"]]
    assert (tmp_path / "SPY_1d.csv").exists() and (tmp_path / "AAPL_1d.csv").exists()
    again, _ = prices.download_prices(["SPY", "AAPL"], "", "", "1d", tmp_path)
    assert calls == [["SPY", "AAPL"]]  # served from the cache
    pd.testing.assert_frame_equal(first["AAPL"], again["AAPL"])
    prices.download_prices(["SPY"], "", "", "1d", tmp_path, refresh=True)
    assert calls[-1] == ["SPY"]


def test_offline_without_cache_names_ticker_cache_and_csv_option(tmp_path, monkeypatch):
    import yfinance

    monkeypatch.setattr(yfinance, "download", lambda *a, **k: pd.DataFrame())
    with pytest.raises(PriceDataError) as err:
        prices.download_prices(["SPY"], "", "", "1d", tmp_path)
    msg = str(err.value)
    assert "'SPY'" in msg and str(tmp_path / "SPY_1d.csv") in msg and "data=PATH" in msg


def test_parquet_with_several_series(tmp_path):
    spy = pd.read_csv(DATA / "SPY.csv").assign(series_id="SPY")
    aapl = pd.read_csv(DATA / "AAPL.csv").assign(series_id="AAPL")
    table = pd.concat([spy, aapl]).assign(Date=lambda d: pd.to_datetime(d.Date))
    table.to_parquet(tmp_path / "prices.parquet", index=False)
    series, _ = prices.read_prices(tmp_path / "prices.parquet")
    assert set(series) == {"SPY", "AAPL"}
    expected, _ = read_price_csv(DATA / "AAPL.csv")
    pd.testing.assert_frame_equal(series["AAPL"], expected, check_freq=False)
    table.loc[5, "Close"] = np.nan
    table.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(PriceDataError, match=r"line 7, column 'close': missing value"):
        prices.read_prices(tmp_path / "bad.parquet")


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"RIFF\x80\x81\x82\x00binary", "not a text CSV file"),
    (b"Date,Open,High,Low,Close\n2020-01-02,1,2,1,2\n2020-01-03,1,2,1,2,9,9\n",
     "not a readable CSV"),
])
def test_unreadable_csv_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(PriceDataError, match=f"^{path}: {message}"):
        read_price_csv(path)


def test_bad_values_are_quoted_as_numbers_not_numpy_reprs(tmp_path):
    path = tmp_path / "neg.csv"
    path.write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,-5,2,-10\n")
    with pytest.raises(PriceDataError) as err:
        read_price_csv(path)
    assert str(err.value).startswith(f"{path}: line 2, column 'low': non-positive price -5; "
                                     "line 2, column 'volume': negative volume -10. Fix")


def test_folder_discovery_takes_any_case_and_names_what_it_skips(tmp_path, caplog):
    spy = (DATA / "SPY.csv").read_bytes()
    (tmp_path / "SPY.CSV").write_bytes(spy)
    (tmp_path / "aapl.csv").write_bytes((DATA / "AAPL.csv").read_bytes())
    (tmp_path / "notes.txt").write_text("not prices")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "MSFT.csv").write_bytes(spy)
    series, _ = prices.read_prices(tmp_path)
    assert sorted(series) == ["SPY", "aapl"]
    assert ("data: read 2 CSV file(s) in " in caplog.text
            and "skipped 2: notes.txt (not a .csv file), old/MSFT.csv (in a sub-folder)"
            in caplog.text)
    (tmp_path / "SPY.CSV").unlink()
    (tmp_path / "aapl.csv").unlink()
    with pytest.raises(PriceDataError, match=r"no \.csv files directly in .*skipped: notes"):
        prices.read_prices(tmp_path)


def test_a_semicolon_file_says_what_separates_its_columns(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("Date;Open;High;Low;Close\n2020-01-02;1;2;1;2\n")
    with pytest.raises(PriceDataError, match=r"semi.csv: missing column.*holds ';': columns "
                                             r"must be separated by commas"):
        read_price_csv(path)


def test_a_series_outside_a_split_is_named_and_an_empty_split_is_an_error(caplog):
    import pandas as pd

    from pipeline.tasks.prices.task import check_splits

    cutoffs = (pd.Timestamp("2015-01-01"), pd.Timestamp("2016-01-01"))
    both, early = np.array([0, 0, 1, 2]), np.array([0, 0, 0, 0])
    check_splits(["SPY", "OLD"], [both, early], cutoffs)
    assert "no validation (from 2015-01-01) samples in OLD" in caplog.text
    assert "no test (from 2016-01-01) samples in OLD" in caplog.text
    with pytest.raises(ValueError, match=r"the test \(from 2016-01-01\) split is empty for every"):
        check_splits(["A", "B"], [np.array([0, 1]), np.array([0, 0, 1])], cutoffs)


def test_scale_free_features_read_the_same_on_a_quieter_series():
    """Prices p^0.1 move a tenth as much (log returns and ranges x 0.1): the scale-free
    features are the same, the trailing volatility a tenth; the EWMA is the recursion."""
    frame, _ = read_price_csv(DATA / "SPY.csv")
    quiet = frame.assign(**{c: frame[c] ** 0.1 for c in ("adj_close", "high", "low")})
    x, s = prices.scale_free(prices.price_features(frame, use_volume=True))
    xq, sq = prices.scale_free(prices.price_features(quiet, use_volume=True))
    assert x.shape == (len(frame) - 1, len(prices.SCALE_FREE) + 1) and np.isfinite(x).all()
    np.testing.assert_allclose(xq, x, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(sq, 0.1 * s, rtol=1e-6)
    r = np.diff(np.log(frame.adj_close.to_numpy()))
    v = np.mean(r[:prices.SEED_DAYS] ** 2)
    for t in range(300):
        v = prices.EWMA_DECAY * v + (1 - prices.EWMA_DECAY) * r[t] ** 2
    assert s[299] == pytest.approx(np.sqrt(v), rel=1e-6)  # features are float32
    assert x[300, 0] == pytest.approx(r[300] / s[299], rel=1e-5)  # the scale before the day
    assert prices.feature_names(True, scale_free=True)[:2] == ["return_over_vol",
                                                               "range_over_vol"]


def test_a_price_that_never_moves_has_the_floor_as_its_scale():
    flat = pd.DataFrame({"adj_close": np.full(40, 10.0), "high": 10.0, "low": 10.0})
    x, s = prices.scale_free(prices.price_features(flat, use_volume=False))
    assert (s == prices.VOL_FLOOR).all() and np.isfinite(x).all()


def test_the_bundled_universe_is_300_whole_series():
    series, _ = prices.read_prices(DATA.parent / "universe.parquet")
    assert len(series) == 300 and {"AAPL", "MSFT", "XOM", "CVX"} <= set(series)
    assert {len(f) for f in series.values()} == {6084}
    aapl = series["AAPL"]
    assert str(aapl.index[0].date()) == "2000-01-03" and str(aapl.index[-1].date()) == "2024-03-08"
    move = aapl.adj_close.pct_change().loc["2000-09-29"]
    assert move == pytest.approx(-0.52, abs=0.01)  # the data README's real event


def _write(folder, name, frame):
    folder.mkdir(exist_ok=True)
    frame.to_csv(folder / name, index=False)


def test_cached_read_is_the_read_and_follows_the_content(tmp_path, monkeypatch):
    spy = pd.read_csv(DATA / "SPY.csv")
    _write(tmp_path / "data", "SPY.csv", spy)
    _write(tmp_path / "data", "AAPL.csv", pd.read_csv(DATA / "AAPL.csv"))
    first, _, _ = prices.cached_prices(tmp_path / "data", "none", False, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "prices").glob("*.parquet"))) == 1
    read = prices.read_prices_skipping
    monkeypatch.setattr(prices, "read_prices_skipping", lambda *a: pytest.fail("not cached"))
    again, _, _ = prices.cached_prices(tmp_path / "data", "none", False, tmp_path / "cache")
    for name in ("SPY", "AAPL"):
        pd.testing.assert_frame_equal(again[name], first[name], check_freq=False)
    monkeypatch.setattr(prices, "read_prices_skipping", read)
    spy.loc[10, "Close"] = 1.0  # a changed file is read again
    _write(tmp_path / "data", "SPY.csv", spy)
    changed, _, _ = prices.cached_prices(tmp_path / "data", "none", False, tmp_path / "cache")
    assert changed["SPY"].close.iloc[10] == 1.0


def test_bad_files_stop_the_read_all_named_or_are_left_out_and_listed(tmp_path):
    spy = pd.read_csv(DATA / "SPY.csv")
    _write(tmp_path, "SPY.csv", spy)
    _write(tmp_path, "BAD.csv", spy.assign(Close=spy.Close.where(spy.index != 3, -1.0)))
    _write(tmp_path, "OTHER.csv", spy.rename(columns={"Close": "Last"}))
    with pytest.raises(PriceDataError, match=r"2 bad price series: .*BAD.csv: line 5, "
                       r"column 'close': non-positive price -1.*OTHER.csv: missing column.*"
                       "skip_bad=true"):
        prices.read_prices(tmp_path)
    series, _, bad = prices.read_prices_skipping(tmp_path, skip_bad=True)
    assert list(series) == ["SPY"]
    assert [Path(name).name for name, _ in bad] == ["BAD.csv", "OTHER.csv"]
    table = spy.assign(series_id="SPY", Date=pd.to_datetime(spy.Date))
    both = pd.concat([table, table.assign(series_id="NEG", Low=-table.Low)])
    both.to_parquet(tmp_path / "two.parquet", index=False)
    series, _, bad = prices.read_prices_skipping(tmp_path / "two.parquet", skip_bad=True)
    assert list(series) == ["SPY"] and "two.parquet[series_id=NEG]" in bad[0][0]
    _write(tmp_path / "none", "BAD.csv", spy.assign(Close=-1.0))
    with pytest.raises(PriceDataError, match="BAD.csv: line 2"):  # nothing left: an error
        prices.read_prices_skipping(tmp_path / "none", skip_bad=True)


def test_a_calendar_split_and_bad_or_short_series_left_out(tmp_path):
    """val_start/test_start cut every series on those days; with skip_bad a bad file and
    a series too short for the lookback are left out, each with its reason."""
    from pipeline.core.config import build_config
    from pipeline.tasks.prices.task import TASK

    spy = pd.read_csv(DATA / "SPY.csv")
    _write(tmp_path / "data", "SPY.csv", spy)
    _write(tmp_path / "data", "AAPL.csv", pd.read_csv(DATA / "AAPL.csv"))
    _write(tmp_path / "data", "SHORT.csv", spy.head(30))
    _write(tmp_path / "data", "BAD.csv", spy.assign(High="x"))
    cfg = {"data": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache"),
           "val_start": "2014-01-02", "test_start": "2016-01-04"}
    with pytest.raises(PriceDataError, match="BAD.csv: line 2, column 'high'"):
        TASK.prepare(build_config(cfg))
    data = TASK.prepare(build_config({**cfg, "skip_bad": "true"}))
    assert data.names == ["AAPL", "SPY"]
    assert [(Path(n).name, why.split(",")[0]) for n, why in data.bad] == [
        ("BAD.csv", "line 2"), ("SHORT", "30 rows")]
    assert [str(c.date()) for c in data.cutoffs[:2]] == ["2014-01-02", "2016-01-04"]
    for dates, split in zip(data.dates, data.split, strict=True):  # by the first target day
        first = {k: dates[np.flatnonzero(split == k) + 1] for k in (0, 1, 2)}
        assert first[2].min() == np.datetime64("2016-01-04")
        assert first[1].min() == np.datetime64("2014-01-02")
        assert first[0].max() < first[1].min() and first[1].max() < first[2].min()
    assert "2 bad series left out" in data.summary()


def test_scale_free_features_read_only_the_past():
    """A series cut at any day gives the same features up to that day: nothing looks ahead
    (a served request's history ends there); a big move shows a quarter later."""
    frame, _ = read_price_csv(DATA / "AAPL.csv")
    full, s = prices.scale_free(prices.price_features(frame, use_volume=True))
    for n in (30, 300, 1500):
        cut, s_cut = prices.scale_free(prices.price_features(frame.iloc[:n + 1], use_volume=True))
        np.testing.assert_array_equal(cut, full[:n])
        np.testing.assert_array_equal(s_cut, s[:n])
    z2 = np.zeros(400)
    z2[100] = 9.0
    quarter = prices._lagged_max(z2, *prices.SEASONS["quarter"])
    assert np.flatnonzero(quarter).tolist() == list(range(157, 167))


def test_each_series_is_held_out_by_one_fold_and_the_groups_are_even():
    from pipeline.tasks.prices.task import held_out

    names = [f"T{i}" for i in range(23)]
    groups = [held_out(names, 5, k, seed=0) for k in range(1, 6)]
    assert sorted(n for g in groups for n in g) == sorted(names)
    assert sorted(map(len, groups)) == [4, 4, 5, 5, 5]
    assert groups != [held_out(names, 5, k, seed=1) for k in range(1, 6)]  # drawn by seed
    assert groups == [held_out(list(reversed(names)), 5, k, seed=0) for k in range(1, 6)]


def test_a_series_listed_after_validation_starts_is_named_or_left_out():
    """SPY's data start on 2007-12-31: with validation from 2006 it has no history to train
    on or to fit GARCH on; the run stops naming it, or leaves it out with skip_bad."""
    from pipeline.core.config import build_config
    from pipeline.tasks.prices.task import TASK

    cfg = {"data": str(DATA), "val_start": "2006-01-03", "test_start": "2008-01-02"}
    with pytest.raises(ValueError, match=r"data: series too short: SPY: 0 rows before "
                                         r"2006-01-03, too few to train on and fit the "
                                         r"baselines on \(it needs 67\); or pass skip_bad=true"):
        TASK.prepare(build_config(cfg))
    data = TASK.prepare(build_config({**cfg, "skip_bad": "true"}))
    assert data.names == ["AAPL", "GSPC", "MSFT"] and data.bad[0][0] == "SPY"
    early = {**cfg, "val_start": "1980-01-02", "test_start": "1981-01-02", "skip_bad": "true"}
    with pytest.raises(ValueError, match=r"; skip_bad=true would leave out every series$"):
        TASK.prepare(build_config(early))
