"""Batch scoring with Spark (pipeline/score_spark.py: mlflow.pyfunc.spark_udf) in
local[2], as a user runs it (PYSPARK_PYTHON the venv's, SPARK_LOCAL_IP 127.0.0.1, the
UI off): a Parquet table of price histories (array columns; more series than one
request may hold) through `mlflow run -e score-spark`, and one of audio bytes (a binary
column) through `python -m`; each table's rows equal the REST endpoint's for the same
input, sent as lists and base64; a bad row past the first batch is named as the
table's row (or by its id), and a column of the wrong kind by its name."""

import base64
import json
import os
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow_server import post, serving

from data_loaders.prices import read_price_csv
from models.price_model import request_row
from pipeline.main import main
from tests.conftest import PRICES, fresh_store, mlflow_run, python_m

# in CI (make test installs Java) a missing Java fails the tests; elsewhere it skips them
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("CI"),
                                 reason="no Java 17 here (make system installs it)")]
PRICE_MODEL = "models:/prices-returns-h1@champion"
SPEECH_MODEL = "models:/speech-classify@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_fsdd):
    tmp = tmp_path_factory.mktemp("spark")
    with fresh_store(tmp):
        main(["--data", str(PRICES), "--epochs", "1", "--hidden", "8", "--lookback", "16"])
        main(["--task", "speech-classify", "--data", str(small_fsdd), "--epochs", "1",
              "--hidden", "8", "--synthetic_voices", "0", "--feature_cache",
              str(tmp / "cache")])
        yield tmp


@pytest.fixture(autouse=True)
def loopback(monkeypatch):
    """Spark's driver on 127.0.0.1 (the steps' environments copy this one)."""
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")


def rest(model_uri: str, store, frame: pd.DataFrame) -> pd.DataFrame:
    body = {"dataframe_split": frame.to_dict(orient="split", index=False)}
    with serving(model_uri, store) as url:
        status, text = post(url, body)
    assert status == 200, text
    return pd.DataFrame(json.loads(text)["predictions"])


def same_rows(spark: pd.DataFrame, served: pd.DataFrame, key: str) -> None:
    spark, served = (f.sort_values(key).reset_index(drop=True) for f in (spark, served))
    assert list(spark.columns) == list(served.columns) and len(spark) == len(served) > 0
    for column in spark:
        if spark[column].dtype.kind == "f":
            assert np.allclose(spark[column], served[column], rtol=1e-9, atol=1e-12), column
        else:
            assert spark[column].astype(str).tolist() == served[column].astype(str).tolist()


def test_price_histories_score_in_spark_as_over_rest(store):
    frames = {n: read_price_csv(PRICES / f"{n}.csv")[0] for n in ("SPY", "AAPL", "GSPC",
                                                                  "MSFT")}
    columns = ["close", "high", "low", "volume"]
    table = pd.DataFrame([request_row(f.iloc[-60 - 5 * i:], n, columns)
                          for i, (n, f) in enumerate(frames.items())])
    # and more series than one request may hold: Spark must hand them over in parts
    spy = frames["SPY"]
    many = pd.DataFrame([request_row(spy.iloc[i:i + 20], f"spy-{i}", columns)
                         for i in range(1_100)])
    pd.concat([table, many]).to_parquet(store / "prices.parquet")
    proc = mlflow_run("score-spark", {"input": store / "prices.parquet",
                                      "output": store / "prices-scored.parquet",
                                      "model_uri": PRICE_MODEL, "master": "local[2]"},
                      store, f"sqlite:///{store / 'mlflow.db'}", "prices")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = pd.read_parquet(store / "prices-scored.parquet")
    assert len(scored) == 1_104 and scored.series_id.is_unique
    same_rows(scored[scored.series_id.isin(frames)], rest(PRICE_MODEL, store, table),
              "series_id")


def test_a_daily_job_streams_in_spark_with_one_state_per_series(store):
    """Day 0: each series' history; day 1: its next two days and day 0's state column.
    Each day's output has one row per series, the forecasts one rolling pass gives."""
    frames = {n: read_price_csv(PRICES / f"{n}.csv")[0].iloc[-300:] for n in ("SPY", "AAPL")}
    columns = ["close", "high", "low", "volume"]
    days = [pd.DataFrame([request_row(f.iloc[:-2], n, columns) | {"state": None}
                          for n, f in frames.items()])]  # a column of nulls: all start
    uri = f"sqlite:///{store / 'mlflow.db'}"
    outputs = []
    for k in range(2):
        days[k].to_parquet(store / f"day{k}.parquet")
        proc = python_m("score_spark", ["--input", str(store / f"day{k}.parquet"), "--output",
                                        str(store / f"day{k}-scored.parquet"), "--model_uri",
                                        PRICE_MODEL, "--mode", "stream", "--master",
                                        "local[2]"], store, uri)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append(pd.read_parquet(store / f"day{k}-scored.parquet"))
        state = dict(zip(outputs[-1].series_id, outputs[-1].state, strict=True))
        days.append(pd.DataFrame([request_row(f.iloc[-2:], n, columns) | {"state": state[n]}
                                  for n, f in frames.items()]))
    with fresh_store(store):
        model = mlflow.pyfunc.load_model(PRICE_MODEL)
        whole = pd.DataFrame([request_row(f, n, columns) for n, f in frames.items()])
        rolling = model.predict(whole, params={"mode": "rolling"})
    for k, day in enumerate(outputs):
        assert sorted(day.series_id) == ["AAPL", "SPY"] and (day.state != "").all()
        want = rolling.groupby("series_id").nth(-3 + 2 * k).set_index("series_id")
        got = day.set_index("series_id").loc[want.index]
        assert (got.step == want.step).all() and (got.date == want.date).all()
        assert np.allclose(got.return_h1, want.return_h1, rtol=1e-5, atol=1e-9)


def test_audio_bytes_score_in_spark_as_over_rest(store, small_fsdd):
    files = sorted(small_fsdd.glob("*_jackson_[0-2].wav"))
    table = pd.DataFrame({"audio": [f.read_bytes() for f in files],
                          "utterance_id": [f.stem for f in files]})
    table.to_parquet(store / "audio.parquet")
    proc = python_m("score_spark", ["--input", str(store / "audio.parquet"), "--output",
                                    str(store / "audio-scored.parquet"), "--model_uri",
                                    SPEECH_MODEL, "--master", "local[2]"], store,
                    f"sqlite:///{store / 'mlflow.db'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(files)} predictions" in proc.stdout
    scored = pd.read_parquet(store / "audio-scored.parquet")
    over_rest = table.assign(audio=[base64.b64encode(a).decode() for a in table.audio])
    same_rows(scored, rest(SPEECH_MODEL, store, over_rest), "utterance_id")


def test_a_table_without_the_model_s_columns_is_named(store):
    pd.DataFrame({"x": [1.0]}).to_parquet(store / "other.parquet")
    proc = python_m("score_spark", ["--input", str(store / "other.parquet"), "--output",
                                    str(store / "o.parquet"), "--model_uri", PRICE_MODEL,
                                    "--master", "local[1]"], store,
                    f"sqlite:///{store / 'mlflow.db'}")
    assert proc.returncode == 2
    assert "error: input: " in proc.stderr and "has none of the columns the model takes" \
        in proc.stderr
    pd.DataFrame({"close": [1.0, 2.0]}).to_parquet(store / "scalars.parquet")
    proc = python_m("score_spark", ["--input", str(store / "scalars.parquet"), "--output",
                                    str(store / "o.parquet"), "--model_uri", PRICE_MODEL,
                                    "--master", "local[1]"], store,
                    f"sqlite:///{store / 'mlflow.db'}")
    assert proc.returncode == 2
    assert "column 'close': expected an array per row (one request row each), got double" \
        in proc.stderr


BAD_ROWS = {  # what the table holds -> the line that names the bad row
    "no ids": "row 1050, column 'close': must be > 0",
    "ids": "row with series_id 'spy-1050', column 'close': must be > 0",
    "a long id": "row 1090, column 'series_id': 300 characters; the limit is 256",
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_past_the_first_batch_is_named_as_the_table_s(store, case):
    """1,100 series: Spark hands them over in two batches; the bad one is in the second."""
    spy = read_price_csv(PRICES / "SPY.csv")[0]
    table = pd.DataFrame([request_row(spy.iloc[i:i + 20], f"spy-{i}", ["close", "high", "low",
                                                                       "volume"])
                          for i in range(1_100)])
    table.at[1050, "close"] = [-1.0] * 20
    table.at[1090, "series_id"] = "x" * 300
    if case != "a long id":
        table = table.drop(columns=["series_id"]) if case == "no ids" else \
            table.assign(series_id=[f"spy-{i}" for i in range(1_100)])
    table.to_parquet(store / "bad.parquet")
    out = store / "bad-scored.parquet"
    proc = python_m("score_spark", ["--input", str(store / "bad.parquet"), "--output",
                                    str(out), "--model_uri", PRICE_MODEL, "--master",
                                    "local[2]"], store, f"sqlite:///{store / 'mlflow.db'}")
    assert proc.returncode == 2
    assert f"error: input: {store / 'bad.parquet'}: {BAD_ROWS[case]}" in proc.stderr, \
        proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) < 20  # our line, not Spark's logs
    assert not out.exists() and not list(store.glob(".bad-scored*"))  # nothing half-written
