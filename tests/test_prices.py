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

    from pipeline.tasks.prices import check_splits

    cutoffs = (pd.Timestamp("2015-01-01"), pd.Timestamp("2016-01-01"))
    both, early = np.array([0, 0, 1, 2]), np.array([0, 0, 0, 0])
    check_splits(["SPY", "OLD"], [both, early], cutoffs)
    assert "no validation (from 2015-01-01) samples in OLD" in caplog.text
    assert "no test (from 2016-01-01) samples in OLD" in caplog.text
    with pytest.raises(ValueError, match=r"the test \(from 2016-01-01\) split is empty for every"):
        check_splits(["A", "B"], [np.array([0, 1]), np.array([0, 0, 1])], cutoffs)
