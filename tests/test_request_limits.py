"""The served price model in process: batching across series gives what each series gives
alone, work goes in bounded chunks, a request's cost is checked from its size before any
work, and every bad field is a 400 naming row, column and problem."""

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from data_loaders.prices import read_price_csv
from models import networks, price_model
from models.price_model import request_row
from tests.conftest import PRICES, price_forecaster

COLUMNS = ["close", "high", "low", "volume"]
SPY, _ = read_price_csv(PRICES / "SPY.csv")


@pytest.fixture(scope="module", params=["full", "truncated"])
def model(request, tmp_path_factory):
    """A windowed (full BPTT) and a stateful (truncated BPTT) model."""
    return price_forecaster(tmp_path_factory.mktemp(request.param), bptt=request.param)


def rows(lengths, start=0) -> pd.DataFrame:
    return pd.DataFrame([request_row(SPY.iloc[start + 7 * i:start + 7 * i + n], f"s{i}",
                                     COLUMNS) for i, n in enumerate(lengths)])


@pytest.mark.parametrize("mode", ["last", "rolling"])
def test_a_batch_gives_what_each_series_gives_alone(model, mode):
    batch = rows([40, 9, 300, 57, 9])
    together = model.predict(None, batch, {"mode": mode})
    alone = pd.concat([model.predict(None, batch.iloc[[i]], {"mode": mode})
                       for i in range(len(batch))], ignore_index=True)
    pd.testing.assert_frame_equal(together[["series_id", "step", "date"]],
                                  alone[["series_id", "step", "date"]])
    assert np.allclose(together[["return_h1", "return_h2"]], alone[["return_h1", "return_h2"]],
                       rtol=1e-5, atol=1e-7)
    if mode == "last":
        assert together.step.tolist() == [n - 1 for n in (40, 9, 300, 57, 9)]
        assert together.date.tolist() == [r[-1] for r in batch.dates]


def test_chunks_change_nothing(model, monkeypatch):
    batch = rows([300, 120, 9])
    whole = model.predict(None, batch, {"mode": "rolling"})
    monkeypatch.setattr(networks, "WINDOWS_PER_CALL", 7)
    monkeypatch.setattr(networks, "STEPS_PER_CALL", 13)
    chunked = model.predict(None, batch, {"mode": "rolling"})
    assert np.allclose(whole[["return_h1", "return_h2"]], chunked[["return_h1", "return_h2"]],
                       rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("limit, mode, words", [
    ("MAX_PRICES", "last", ["request has 400 prices", "limit is 399 per request",
                            "split the series across 2 or more requests"]),
    ("MAX_RESPONSE_VALUES", "rolling", ["request has 368 rolling forecasts", "limit is 100",
                                  "in parts of at most 100 forecasts, each part with the 8 "
                                  "prices before its first forecast"]),
])
def test_a_request_over_a_limit_is_refused_before_any_work(model, monkeypatch, limit, mode,
                                                           words):
    # rolling: 500 values is 100 rows of series_id, step, date, return_h1 and return_h2
    monkeypatch.setattr(price_model, limit, {"MAX_PRICES": 399, "MAX_RESPONSE_VALUES": 500}[limit])
    monkeypatch.setattr(type(model), "_series", lambda *a: pytest.fail("work started"))
    with pytest.raises(MlflowException) as err:
        model.predict(None, rows([100] * 4), {"mode": mode})
    for word in words:
        assert word in err.value.message


def test_a_rolling_limit_counts_the_lookback_of_a_windowed_model_and_the_columns(tmp_path):
    windowed = price_forecaster(tmp_path / "w", lookback=64)
    stateful = price_forecaster(tmp_path / "s", bptt="truncated", lookback=64)
    quantiles = price_forecaster(tmp_path / "q", bptt="truncated", lookback=64,
                                 loss="quantile", quantiles=(0.05, 0.5, 0.95))
    rows = price_model.MAX_RESPONSE_VALUES // 5  # series_id, step, date, 2 forecasts
    assert windowed.limits()["rolling forecasts"] == min(rows,
                                                         price_model.MAX_WINDOW_STEPS // 64)
    assert stateful.limits()["rolling forecasts"] == rows
    # each forecast column followed by its 3 quantiles: 3 + 2 x 4 values a row
    assert quantiles.limits()["rolling forecasts"] == price_model.MAX_RESPONSE_VALUES // 11


def _with(**changes) -> pd.DataFrame:
    row = request_row(SPY.iloc[100:130], "SPY", COLUMNS)
    for key, change in changes.items():
        row[key] = change(row[key]) if callable(change) else change
    return pd.DataFrame([row])


def _at(values, k, value):
    values = list(values)
    values[k] = value
    return values


BAD = {
    "long series_id": (_with(series_id="x" * 257), "row 0, column 'series_id': 257 characters; "
                                                   "the limit is 256"),
    "series_id list": (_with(series_id=["a"]), "column 'series_id': expected a string, got list"),
    "null date": (_with(dates=lambda d: _at(d, 3, None)),
                  "column 'dates': position 3: expected an ISO date string, got None"),
    "garbage date": (_with(dates=lambda d: _at(d, 4, "soon")),
                     "position 4: cannot read 'soon' as an ISO date"),
    "newest first": (_with(dates=lambda d: d[::-1]), "position 1: '2008-07-03' is not after "
                                                     "'2008-07-07'; dates must be strictly "
                                                     "increasing"),
    "repeated date": (_with(dates=lambda d: _at(d, 5, d[4])), "position 5"),
    "dates short": (_with(dates=lambda d: d[:-1]), "29 dates for 30 prices"),
    "dates a string": (_with(dates="2020-01-01"), "expected an array of ISO date strings"),
    "high below low": (_with(high=lambda h: _at(h, 2, 1.0)),
                       "row 0, column 'high': 1.0 is below 'low'"),
    "absurd price": (_with(close=lambda c: _at(c, 6, 1e30)),
                     "column 'close': must lie in [1e-06, 1e+09], got 1e+30 at position 6"),
    "a number past float64": (_with(close=lambda c: _at(c, 4, 10 ** 400)),
                              "row 0, column 'close': position 4: "),
    "absurd volume": (_with(volume=lambda v: _at(v, 1, 1e20)), "column 'volume': must lie in"),
    "nested arrays": (_with(low=lambda v: [v]), "column 'low': expected an array of numbers"),
    "a word among prices": (_with(close=lambda c: _at(c, 7, "abc")),
                            "column 'close': position 7: expected a number, got 'abc'"),
    "a number as text": (_with(volume=lambda v: _at(v, 2, "250.1")),
                         "column 'volume': position 2: expected a number, got '250.1'"),
    "a boolean": (_with(high=lambda h: [True] * len(h)), "column 'high': position 0: expected "
                                                         "a number, got True"),
    "a boolean among numbers": (_with(low=lambda v: _at(v, 9, False)),
                                "column 'low': position 9: expected a number, got False"),
    "now as a date": (_with(dates=lambda d: _at(d, 29, "now")),
                      "column 'dates': position 29: cannot read 'now' as an ISO date"),
    "year 99999": (_with(dates=lambda d: _at(d, 29, "99999-01-01")), "position 29: cannot read"),
    "year 1066": (_with(dates=lambda d: ["1066-10-14"] + d[1:]), "position 0: cannot read"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_fields_are_named(tmp_path_factory, case):
    model = price_forecaster(tmp_path_factory.mktemp("m"))
    frame, message = BAD[case]
    with pytest.raises(MlflowException) as err:
        model.predict(None, frame, {"mode": "rolling"})
    assert message in err.value.message


@pytest.mark.parametrize("loss, quantiles", [("gaussian", (0.05, 0.95)),
                                             ("quantile", (0.01, 0.5, 0.99))])
def test_distributional_models_serve_ordered_quantiles_beside_the_point(tmp_path, loss,
                                                                       quantiles):
    model = price_forecaster(tmp_path, loss=loss, quantiles=quantiles)
    got = model.predict(None, rows([40, 60]), {"mode": "rolling"})
    outputs = model.signature(model.spec).outputs.inputs
    assert list(got.columns) == [c.name for c in outputs if c.required]  # state: streams only
    for h in ("return_h1", "return_h2"):
        cols = [f"{h}_q{100 * q:g}" for q in quantiles]
        assert (np.diff(got[cols].to_numpy(), axis=1) >= 0).all()
        assert ((got[cols[0]] <= got[h]) & (got[h] <= got[cols[-1]])).all()
        assert (f"{h}_scale" in got) == (loss == "gaussian")
    assert np.isfinite(got.drop(columns=["series_id", "step", "date"]).to_numpy()).all()


def test_dates_with_a_time_zone_are_read_quietly(tmp_path, recwarn):
    model = price_forecaster(tmp_path)
    frame = _with(dates=lambda d: [f"{x}T16:00:00Z" for x in d])
    assert model.predict(None, frame).date.tolist() == [frame.dates[0][-1]]
    assert not [w for w in recwarn if "timezone" in str(w.message)]


def test_ids_and_dates_come_back_as_sent(tmp_path):
    model = price_forecaster(tmp_path)
    frame = _with(series_id="é" * 256)
    got = model.predict(None, frame, {"mode": "rolling"})
    assert (got.series_id == "é" * 256).all()
    assert got.date.tolist() == frame.dates[0][8:]
    undated = model.predict(None, frame.drop(columns=["dates", "series_id"]))
    assert undated.series_id.tolist() == ["0"] and undated.date.tolist() == [""]


def test_batch_prediction_splits_its_calls_by_the_model_s_budget(tmp_path, monkeypatch):
    from pipeline import predict, tasks

    model = price_forecaster(tmp_path)

    class PyFunc:  # the two methods predict_rows uses of a loaded pyfunc
        def unwrap_python_model(self):
            return model

        def predict(self, frame, params=None):
            return model.predict(None, frame, params)

    monkeypatch.setattr(price_model, "MAX_PRICES", 250)
    frame = rows([100] * 5)
    assert tasks.calls(model, frame) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    got, skipped = predict.predict_rows(PyFunc(), frame, {"mode": "rolling"}, progress=False)
    assert got.groupby("series_id").size().tolist() == [92] * 5 and skipped == []
    with pytest.raises(ValueError, match=r"^input s0: request has 300 prices; the limit is 250"):
        predict.predict_rows(PyFunc(), rows([300]), progress=False)
    # skip_bad: a row over the budget (a call of its own) and one with text among its
    # prices inside a call of three are left out by name; the others predicted as alone
    mixed = rows([100, 300, 60, 60, 60])
    mixed.at[3, "close"] = _at(mixed.at[3, "close"], 5, "n/a")
    got, skipped = predict.predict_rows(PyFunc(), mixed, progress=False, skip_bad=True)
    assert got.series_id.tolist() == ["s0", "s2", "s4"]
    assert [name for name, _ in skipped] == ["s1", "s3"]
    assert skipped[0][1].startswith("request has 300 prices; the limit is 250 per request")
    assert skipped[1][1].startswith("column 'close'") and "'n/a'" in skipped[1][1]
    alone = predict.predict_rows(PyFunc(), mixed.iloc[[0, 2, 4]], progress=False)[0]
    pd.testing.assert_frame_equal(got, alone)
    with pytest.raises(ValueError, match=r"^input: the model refused every input \(2; the "
                                         r"first: s0: request has 300"):
        predict.predict_rows(PyFunc(), rows([300, 300]), progress=False, skip_bad=True)


@pytest.mark.parametrize("mode", ["last", "rolling"])
@pytest.mark.parametrize("text", [object, str])
def test_array_cells_as_numpy_arrays_give_what_lists_give(model, mode, text):
    """Spark hands `predict` NumPy arrays (strings in an object array), REST lists."""
    lists = rows([90, 120])
    arrays = lists.map(lambda v: np.asarray(v, dtype=text if isinstance(v[0], str) else None)
                       if isinstance(v, list) else v)
    assert isinstance(arrays["close"][0], np.ndarray) and arrays["dates"][0].dtype.kind == \
        ("O" if text is object else "U")
    pd.testing.assert_frame_equal(model.predict(None, lists, {"mode": mode}),
                                  model.predict(None, arrays, {"mode": mode}))


def test_a_row_error_names_the_row_s_id_after_it(tmp_path):
    """So a scorer that splits a table into batches (Spark) can say which row failed."""
    model = price_forecaster(tmp_path)
    good = request_row(SPY.iloc[100:130], "SPY", COLUMNS)
    frame = pd.DataFrame([good, {**good, "series_id": "AAPL", "low": [-1.0] * 30}])
    with pytest.raises(MlflowException) as err:
        model.predict(None, frame)
    assert err.value.message.startswith("row 1, column 'low': must be > 0, got -1.0")
    assert err.value.message.endswith("(series_id 'AAPL')")
    with pytest.raises(MlflowException) as err:  # no id sent: the message as it was
        model.predict(None, frame.drop(columns=["series_id"]))
    assert err.value.message.endswith("at position 0")
    with pytest.raises(MlflowException) as err:  # the id itself is the problem
        model.predict(None, frame.assign(series_id=["SPY", "x" * 257]))
    assert err.value.message == "row 1, column 'series_id': 257 characters; the limit is 256"
