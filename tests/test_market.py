"""The market table (data_loaders/market.py): built from a universe's cross-section, read
with named errors, and taken at each price by a model trained with it."""

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from data_loaders.market import (
    MARKET_FEATURES,
    Z_CAP,
    main,
    market_at,
    market_columns,
    market_table,
    read_market,
)
from data_loaders.prices import PriceDataError, price_features, read_price_csv, scale_free
from models.price_model import request_row
from tests.conftest import PRICES, bundled_market, price_forecaster

COLUMNS = ["close", "high", "low", "volume"]


def frame(days: int, seed: int, start="2020-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, days)))
    index = pd.bdate_range(start, periods=days)
    return pd.DataFrame({"open": close, "high": close * 1.01, "low": close * 0.99,
                         "close": close, "adj_close": close, "volume": 1e6}, index=index)


def test_the_table_is_the_cross_sectional_mean_of_each_series_own_features():
    frames = {"a": frame(300, 1), "b": frame(280, 2, "2020-01-29")}  # b starts 20 days later
    frames["b"].iloc[100:, :5] *= 1e-6  # a collapse: one 10^-6 day, its z^2 capped
    table = market_table(frames)
    assert table.columns.tolist() == list(MARKET_FEATURES)
    assert table.index[0] == frames["a"].index[1] and len(table) == 299
    own = {n: scale_free(price_features(f, False))[0] for n, f in frames.items()}
    day = frames["b"].index[50]  # both trade
    ia, ib = frames["a"].index.get_loc(day) - 1, 49
    assert table.loc[day, "market_vol_ratio"] == pytest.approx(
        (own["a"][ia, 2] + own["b"][ib, 2]) / 2, rel=1e-5)
    early = frames["a"].index[5]  # only a trades: its own value
    assert table.loc[early, "market_vol_ratio"] == pytest.approx(own["a"][4, 2], rel=1e-5)
    crash = frames["b"].index[100]
    za = np.clip([own["a"][frames["a"].index.get_loc(d) - 1, 0]
                  for d in frames["b"].index[96:101]], -Z_CAP, Z_CAP)
    zb = np.clip(own["b"][95:100, 0], -Z_CAP, Z_CAP)
    assert zb[-1] == -Z_CAP and abs(za[-1]) < Z_CAP
    assert table.loc[crash, "market_shock"] == pytest.approx(
        np.mean(np.log1p((za ** 2 + zb ** 2) / 2)), rel=1e-5)
    assert table.loc[crash, "market_move"] == pytest.approx((za[-1] + zb[-1]) / 2, rel=1e-5)
    assert table.loc[early, "market_move"] == pytest.approx(own["a"][4, 0], rel=1e-5)


def test_the_command_writes_a_table_that_reads_back(tmp_path, capsys):
    out = tmp_path / "market.csv"
    main(["--data", str(PRICES), "--out", str(out)])
    assert "from 4 series" in capsys.readouterr().out
    table = read_market(out)
    assert np.allclose(table.to_numpy(), bundled_market().to_numpy(), atol=1e-6)
    assert (table.index == bundled_market().index).all()


def test_the_command_names_a_bad_file_or_leaves_it_out_or_repairs_it(tmp_path, capsys):
    import shutil

    for name in ("SPY", "AAPL"):
        shutil.copy(PRICES / f"{name}.csv", tmp_path / f"{name}.csv")
    lines = (tmp_path / "AAPL.csv").read_text().splitlines()
    lines[19] = lines[19].replace(lines[19].split(",")[1], "abc", 1)
    (tmp_path / "AAPL.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "market.csv"
    with pytest.raises(SystemExit, match=r"AAPL.csv: line 20, column 'open': cannot parse "
                                         r"'abc'.*repair=drop"):
        main(["--data", str(tmp_path), "--out", str(out)])
    assert not out.exists()
    main(["--data", str(tmp_path), "--out", str(out), "--skip_bad", "true"])
    said = capsys.readouterr().out
    assert "from 1 series; left out 1: " in said
    assert "AAPL.csv (line 20, column 'open': cannot parse 'abc'" in said
    assert read_market(out).index[0] == read_price_csv(PRICES / "SPY.csv")[0].index[1]
    main(["--data", str(tmp_path), "--out", str(out), "--repair", "drop"])
    assert "from 2 series; 1 row(s) repaired (drop)" in capsys.readouterr().out


def test_the_bundled_table_is_the_bundled_universe_s():
    """data/market.csv is what the command builds from data/universe.parquet (the recipe
    reads it): rebuilt here, it matches to its six decimals."""
    from data_loaders.prices import read_prices

    bundled = read_market(PRICES.parent / "market.csv")
    rebuilt = market_table(read_prices(PRICES.parent / "universe.parquet")[0])
    assert (bundled.index == rebuilt.index).all() and len(bundled) == 6083
    assert np.allclose(bundled.to_numpy(), rebuilt.to_numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.drop(columns="market_shock"), "missing column(s) ['market_shock']"),
    (lambda t: t.assign(date=t.date.where(t.index != 3, "2020-13-01")),
     "row 5, column 'date': cannot read '2020-13-01'"),
    (lambda t: t.assign(date=t.date.where(t.index != 3, t.date[1])),
     "row 5, column 'date': 2020-01-02 is not after the row before"),
    (lambda t: t.assign(market_shock=t.market_shock.where(t.index != 2, "nan")),
     "row 4, column 'market_shock': expected a number within +-20, got 'nan'"),
    (lambda t: t.assign(market_vol_ratio=t.market_vol_ratio.where(t.index != 0, "1e9")),
     "row 2, column 'market_vol_ratio': expected a number within +-20, got '1e9'"),
    (lambda t: t.assign(market_move=t.market_move.where(t.index != 5, "")),
     "row 7, column 'market_move': expected a number within +-20, got ''"),
])
def test_a_bad_table_is_named_by_file_row_and_column(tmp_path, edit, message):
    good = pd.DataFrame({"date": pd.bdate_range("2020-01-01", periods=6).strftime("%Y-%m-%d"),
                         "market_vol_ratio": "0.1", "market_shock": "0.7",
                         "market_move": "-0.2"})
    path = tmp_path / "m.csv"
    edit(good).to_csv(path, index=False)
    with pytest.raises(PriceDataError) as err:
        read_market(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_a_day_missing_from_the_table_is_named():
    table = bundled_market()
    with pytest.raises(PriceDataError, match=r"series X: the market table has no row for "
                                             r"2019-01-02 \(it covers 1986-03-14 to 2018-12-31"):
        market_at(table, pd.DatetimeIndex(["2018-12-31", "2019-01-02"]), "series X")
    # the first price's value is not read: the table need not have its day
    got = market_columns(table, pd.DatetimeIndex(["1986-03-13", "1986-03-14"]), "X")
    assert got["market_shock"][0] == got["market_shock"][1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {kind: price_forecaster(tmp_path_factory.mktemp(kind), market=True, **kw)
            for kind, kw in {"stateful": dict(bptt="truncated", loss="gaussian",
                                              scale_free=True),
                             "windowed": dict(bptt="full")}.items()}


def spy(days=400) -> dict:
    prices, _ = read_price_csv(PRICES / "SPY.csv")
    return request_row(prices.iloc[-days:], "SPY", COLUMNS, bundled_market())


@pytest.mark.parametrize("kind", ["stateful", "windowed"])
def test_the_model_reads_the_market_at_each_price(models, kind):
    model, row = models[kind], spy()
    last = model.predict(None, pd.DataFrame([row]))
    rolling = model.predict(None, pd.DataFrame([row]), {"mode": "rolling"})
    assert np.allclose(last.iloc[0, 3:].to_numpy(float), rolling.iloc[-1, 3:].to_numpy(float),
                       rtol=1e-5)
    for column, value in [("market_shock", 0.3), ("market_move", -3.0)]:
        moved = model.predict(None, pd.DataFrame([row | {column: [value] * len(row["close"])}]))
        assert not np.allclose(moved.iloc[0, 3:].to_numpy(float),
                               last.iloc[0, 3:].to_numpy(float)), column
    first = row | {"market_shock": [5.0] + row["market_shock"][1:]}  # the first is not read
    assert np.allclose(model.predict(None, pd.DataFrame([first])).iloc[0, 3:].to_numpy(float),
                       last.iloc[0, 3:].to_numpy(float))


def test_pieces_a_client_builds_from_the_table_give_one_rolling_pass(models):
    """Each piece of a stream made by request_row from its own days (as predict --mode
    stream and a REST client do): a continued piece's first day is read, so it carries the
    table's value for that day, not the next day's."""
    model, (prices, _) = models["stateful"], read_price_csv(PRICES / "SPY.csv")
    frame, table = prices.iloc[-400:], bundled_market()
    whole = model.predict(None, pd.DataFrame([spy()]), {"mode": "rolling"})
    state, parts = None, []
    for a, b in [(0, 250), (250, 251), (251, 400)]:
        row = request_row(frame.iloc[a:b], "SPY", COLUMNS, table)
        out = model.predict(None, pd.DataFrame([row | ({"state": state} if state else {})]),
                            {"mode": "stream"})
        state, parts = out.state.iloc[-1], [*parts, out]
    got = pd.concat(parts, ignore_index=True)
    assert got.step.tolist() == whole.step.tolist()
    assert np.allclose(got.iloc[:, 3:-1].to_numpy(float), whole.iloc[:, 3:].to_numpy(float),
                       rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (lambda r: {k: v for k, v in r.items() if k != "market_shock"},
     "row 0: missing required column 'market_shock'"),
    (lambda r: r | {"market_vol_ratio": r["market_vol_ratio"][:-1]},
     "row 0: market arrays differ in length from the prices"),
    (lambda r: r | {"market_shock": r["market_shock"][:7] + [float("nan")]
                    + r["market_shock"][8:]},
     "row 0, column 'market_shock': expected a finite number within +-20, got nan at "
     "position 7"),
    (lambda r: r | {"market_vol_ratio": ["high"] * len(r["close"])},
     "row 0, column 'market_vol_ratio': position 0: expected a number, got 'high'"),
    (lambda r: r | {"market_move": r["market_move"][:5] + [True] + r["market_move"][6:]},
     "row 0, column 'market_move': position 5: expected a number, got True"),
    (lambda r: r | {"market_move": r["market_move"][:-1] + [-25.0]},
     "row 0, column 'market_move': expected a finite number within +-20, got -25.0 at "
     "position 399"),
])
def test_bad_market_columns_are_named_400s(models, change, message):
    with pytest.raises(MlflowException, match=message.replace("(", r"\(").replace("+", r"\+")):
        models["stateful"].predict(None, pd.DataFrame([change(spy())]))


def test_models_without_the_market_ignore_its_columns(tmp_path):
    model = price_forecaster(tmp_path, bptt="truncated")
    row = spy()
    plain = {k: v for k, v in row.items() if not k.startswith("market_")}
    assert model.predict(None, pd.DataFrame([row])).equals(
        model.predict(None, pd.DataFrame([plain])))
