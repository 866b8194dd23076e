"""The registered model behind the real `mlflow models serve`, on 127.0.0.1 and a free port.

One model is trained and registered in a temporary SQLite store for the module;
the server is started from `models:/prices-returns-h1@champion`, polled on
/ping, and stopped at the end. The largest requests are also sent to the kind of
model `make demo` registers (the volatility preset: stateful, a normal forecast with
seven forecast columns), trained for one epoch.
"""

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow_server import post, serving

from data_loaders.prices import read_price_csv, read_prices
from models.price_model import MAX_ROWS, request_row
from pipeline import predict
from pipeline.core.cli import UsageError
from pipeline.main import main
from tests.conftest import SPY, fresh_store

ROOT = Path(__file__).resolve().parents[1]
MODEL = "models:/prices-returns-h1@champion"
DEMO = "models:/prices-volatility-h5-gaussian@champion"
COLUMNS = ["close", "high", "low", "volume"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    with fresh_store(tmp):
        main(["--data", SPY, "--epochs", "1", "--hidden", "8", "--lookback", "16"])
        main(["--preset", "volatility-tbptt", "--data", SPY, "--epochs", "1"])
        yield tmp


@pytest.fixture(scope="module")
def server(store):
    with serving(MODEL, store) as url:
        yield url


@pytest.fixture(scope="module")
def model(store):
    return mlflow.pyfunc.load_model(MODEL)


def batch(names=("SPY", "AAPL"), length=120) -> pd.DataFrame:
    rows = []
    for name in names:
        frame, _ = read_price_csv(ROOT / "data" / "prices" / f"{name}.csv")
        rows.append(request_row(frame.iloc[-length:], name, COLUMNS))
    return pd.DataFrame(rows)


def split_body(frame: pd.DataFrame, **params) -> dict:
    body = {"dataframe_split": frame.to_dict(orient="split", index=False)}
    return body | ({"params": params} if params else {})


def test_good_batch_matches_in_process_predict(server, model):
    frame = batch()
    status, text = post(server, split_body(frame))
    assert status == 200, text
    got = pd.DataFrame(json.loads(text)["predictions"])
    want = model.predict(frame)
    assert got.series_id.tolist() == ["SPY", "AAPL"] and got.step.tolist() == [119, 119]
    assert got.date.tolist() == want.date.tolist()
    assert np.allclose(got.return_h1, want.return_h1, rtol=1e-6, atol=1e-9)


def test_rolling_mode_is_a_backtest_in_one_request(server, model):
    frame = batch(("SPY",), length=300)
    status, text = post(server, split_body(frame, mode="rolling"))
    assert status == 200, text
    got = pd.DataFrame(json.loads(text)["predictions"])
    assert got.step.tolist() == list(range(16, 300))  # every price with 16 steps behind it
    want = model.predict(frame, params={"mode": "rolling"})
    assert np.allclose(got.return_h1, want.return_h1, rtol=1e-6, atol=1e-9)
    assert np.isfinite(got.return_h1).all()


def test_records_format_is_accepted(server, model):
    frame = batch(("SPY",))
    status, text = post(server, {"dataframe_records": frame.to_dict(orient="records")})
    assert status == 200, text
    got = pd.DataFrame(json.loads(text)["predictions"])
    assert np.allclose(got.return_h1, model.predict(frame).return_h1, rtol=1e-6)


def _with(frame: pd.DataFrame, column: str, value) -> pd.DataFrame:
    out = frame.copy()
    out[column] = [value] * len(out)
    return out


def bad_requests():
    good = batch(("SPY",), length=40)
    row = good.iloc[0]
    nan_close = list(row.close)
    nan_close[5] = float("nan")
    inf_high = list(row.high)
    inf_high[7] = float("inf")
    neg_low = list(row.low)
    neg_low[3] = -1.0
    too_many = pd.concat([batch(("SPY",), length=17)] * (MAX_ROWS + 1), ignore_index=True)
    return {
        "short history": (split_body(batch(("SPY",), length=10)),
                          ["'close'", "10 prices", "17 this model needs"]),
        "NaN": (split_body(_with(good, "close", nan_close)), ["'close'", "NaN", "position 5"]),
        "infinity": (split_body(_with(good, "high", inf_high)), ["'high'", "infinity"]),
        "non-positive price": (split_body(_with(good, "low", neg_low)), ["'low'", "must be > 0"]),
        "missing column": (split_body(good.drop(columns=["volume"])), ["volume"]),
        "wrong type": (split_body(_with(good, "close", "abc")), ["close"]),
        "empty batch": ({"dataframe_split": {"columns": list(good.columns), "data": []}},
                        ["empty batch"]),
        "over the size limit": (split_body(too_many), [f"request has {MAX_ROWS + 1:,} rows (one "
                                                       f"series each)", f"limit is {MAX_ROWS:,} "
                                                       "per request", "across 2 or more"]),
        "unknown mode": (split_body(good, mode="sideways"), ["params.mode", "'sideways'"]),
        "long series_id": (split_body(_with(good, "series_id", "x" * 100_000)),
                           ["'series_id'", "100000 characters", "limit is 256"]),
        "series_id list": (split_body(_with(good, "series_id", ["a"])),
                           ["'series_id'", "expected a string, got list"]),
        "null date": (split_body(_with(good, "dates", [None] + list(row.dates[1:]))),
                      ["'dates'", "position 0", "expected an ISO date string"]),
        "newest first": (split_body(_with(good, "dates", list(row.dates[::-1]))),
                         ["'dates'", "position 1", "strictly increasing"]),
        "high below low": (split_body(_with(good, "high", list(row.low[:3]) + [0.5]
                                            + list(row.high[4:]))),
                           ["'high'", "below 'low'", "position 3"]),
    }


@pytest.mark.parametrize("case", list(bad_requests()))
def test_bad_input_is_a_400_naming_the_field(server, case):
    body, words = bad_requests()[case]
    status, text = post(server, body)
    assert status == 400, text[-500:]
    message = json.loads(text)["message"]
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message[-300:]!r}"


def test_server_keeps_serving_after_bad_input(server):
    for body, _ in bad_requests().values():
        post(server, body)
    status, text = post(server, split_body(batch(("SPY",))))
    assert status == 200 and np.isfinite(json.loads(text)["predictions"][0]["return_h1"])


def test_content_type_behaviour_as_documented(server):
    """docs/serving.md: no Content-Type is MLflow's 500; a wrong one is a 415."""
    import http.client

    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/invocations", skip_accept_encoding=True)
    body = json.dumps(split_body(batch(("SPY",)))).encode()
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    assert conn.getresponse().status == 500
    conn.close()
    status, _ = post(server, split_body(batch(("SPY",))), content_type="text/plain")
    assert status == 415


# The issue asks for this exact check; MLflow 3.13 deprecated it in favour of models.predict.
@pytest.mark.filterwarnings("ignore:.*validate_serving_input.*deprecated")
def test_input_example_validates_for_serving(store):
    from mlflow.models import validate_serving_input
    from mlflow.models.utils import load_serving_example

    local = mlflow.artifacts.download_artifacts(MODEL)
    example = load_serving_example(local)
    out = validate_serving_input(local, example)
    assert len(out) == 1 and np.isfinite(out["return_h1"]).all()


def test_batch_predict_step_writes_what_rest_returns(server, store):
    data = store / "prices"
    data.mkdir(exist_ok=True)
    for name in ("SPY", "AAPL"):
        frame, _ = read_price_csv(ROOT / "data" / "prices" / f"{name}.csv")
        frame.iloc[-60:].rename(columns=str.title).rename(columns={"Adj_Close": "Adj Close"})\
            .to_csv(data / f"{name}.csv", index_label="Date")
    out = store / "pred.csv"
    predict.main(["--input", str(data), "--output", str(out), "--mode", "rolling",
                  "--model_uri", MODEL])
    written = pd.read_csv(out, dtype={"date": str})
    series, _ = read_prices(data)
    rows = pd.DataFrame([request_row(f, n, COLUMNS) for n, f in series.items()])
    status, text = post(server, split_body(rows, mode="rolling"))
    rest = pd.DataFrame(json.loads(text)["predictions"])
    assert status == 200 and len(written) == len(rest) == 2 * (60 - 16)
    assert written.series_id.tolist() == rest.series_id.tolist()
    assert written.date.tolist() == rest.date.tolist()
    assert np.allclose(written.return_h1, rest.return_h1, rtol=1e-6, atol=1e-9)


def test_batch_predict_errors_name_the_input_file(store, capsys):
    data = store / "mixed"
    data.mkdir(exist_ok=True)
    lines = (ROOT / "data" / "prices" / "SPY.csv").read_text().splitlines()
    (data / "LONG.csv").write_text("\n".join(lines[:1] + lines[-100:]) + "\n")
    (data / "SHORT.csv").write_text("\n".join(lines[:1] + lines[-10:]) + "\n")
    with pytest.raises(ValueError, match="^input SHORT: column 'close': 10 prices is shorter "
                                         "than the 17 this model needs") as err:
        predict.main(["--input", str(data), "--output", str(store / "p.csv"),
                      "--model_uri", MODEL])
    assert "SHORT" not in str(err.value).removeprefix("input SHORT")  # named once
    assert not (store / "p.csv").exists()
    (data / "GARBLED.csv").write_text("when,what\nyesterday,a lot\n")  # cannot be read
    out = predict.main(["--input", str(data), "--output", str(store / "p.csv"),
                        "--model_uri", MODEL, "--skip_bad", "true"])
    said = capsys.readouterr()
    assert "skipped input SHORT: column 'close': 10 prices is shorter" in said.err
    assert re.search(r"skipped input \S*GARBLED.csv: ", said.err)
    assert f"{len(out)} predictions for 1 inputs (2 left out: see 'skipped' above)" in said.out
    written = pd.read_csv(store / "p.csv")
    assert len(written) == len(out) > 0 and set(written.series_id) == {"LONG"}
    (store / "taken.csv").mkdir()
    with pytest.raises(UsageError, match="output: .*taken.csv: is a folder"):
        predict.parse(["--output", str(store / "taken.csv")])


def test_batch_predict_leaves_no_half_written_file(store, monkeypatch):
    out = store / "kept.csv"
    out.write_text("previous results\n")

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        predict.write_table(pd.DataFrame({"a": [1]}), out)
    assert out.read_text() == "previous results\n"
    assert [p.name for p in store.glob(".kept.csv.*")] == []


def test_bounded_load_on_loopback(server, capsys):
    """4 concurrent clients, 2,000 requests (3 good : 1 bad), on 127.0.0.1 only; stops
    after 180 s in any case. Zero 5xx, every bad request a 400, memory flat."""
    import concurrent.futures
    import time

    from mlflow_server import tree_rss_mib

    frame, _ = read_price_csv(ROOT / "data" / "prices" / "SPY.csv")
    rng = np.random.default_rng(0)
    plans = []
    for i in range(2_000):
        start, n = int(rng.integers(0, len(frame) - 200)), int(rng.integers(17, 200))
        row = request_row(frame.iloc[start:start + n], f"s{i}", COLUMNS)
        kind = ["good", "good", "good", "bad"][i % 4]
        if kind == "bad":
            row["close"] = row["close"][:5] if i % 8 == 3 else [float("nan")] + row["close"][1:]
        plans.append((kind, split_body(pd.DataFrame([row]),
                                       mode="rolling" if i % 5 == 0 else "last")))
    deadline = time.monotonic() + 180

    def send(plan):
        if time.monotonic() > deadline:
            return plan[0], None, 0.0
        t0 = time.perf_counter()
        status, _ = post(server, plan[1])
        return plan[0], status, time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(send, plans[:200]))  # warm-up
        rss_start = tree_rss_mib(server.pid)
        t0 = time.perf_counter()
        results = list(pool.map(send, plans))
        wall = time.perf_counter() - t0
    rss_end = tree_rss_mib(server.pid)
    done = [r for r in results if r[1] is not None]
    good = [s for k, s, _ in done if k == "good"]
    bad = [s for k, s, _ in done if k == "bad"]
    latency = np.array([t for *_, t in done]) * 1e3
    with capsys.disabled():
        print(f"\nload: {len(done)} requests ({len(good)} good, {len(bad)} bad) by 4 clients in "
              f"{wall:.1f} s ({len(done) / wall:.0f}/s); latency p50 {np.median(latency):.1f} ms, "
              f"p99 {np.percentile(latency, 99):.1f} ms; good: {good.count(200)} x 200, "
              f"{sum(s >= 500 for s in good)} x 5xx; bad: {bad.count(400)} x 400; "
              f"server RSS {rss_start:.0f} -> {rss_end:.0f} MiB")
    assert len(done) == len(plans), "the 180 s bound cut the run short"
    assert good.count(200) == len(good) and bad.count(400) == len(bad)
    assert rss_end <= rss_start * 1.10 + 10, (rss_start, rss_end)


@pytest.fixture(scope="module")
def demo_server(store):
    with serving(DEMO, store) as url:
        yield url


@pytest.mark.parametrize("which, lookback", [("server", 16), ("demo_server", 64)])
@pytest.mark.parametrize("mode", ["rolling", "last"])
def test_the_largest_request_allowed_finishes_and_gives_its_memory_back(request, capsys, mode,
                                                                        which, lookback):
    """The most forecasts (rolling) and the most prices (last) one request may ask for:
    inside MLflow's 60 s scoring timeout, at most 1 GiB above the idle server while it
    runs, and back within 10 % of idle a few seconds after; for a windowed returns model
    and for the demo's stateful volatility model with its scale and quantile columns."""
    from mlflow_server import memory_of_request

    from bench.common import long_history
    from models.price_model import MAX_PRICES

    server = request.getfixturevalue(which)
    uri = MODEL if which == "server" else DEMO
    most = mlflow.pyfunc.load_model(uri).unwrap_python_model().limits()["rolling forecasts"]
    prices = most + lookback if mode == "rolling" else MAX_PRICES
    body = split_body(pd.DataFrame([request_row(long_history(prices), "long", COLUMNS)]),
                      mode=mode)
    got = memory_of_request(server, split_body(batch(("SPY",))), body)
    assert got["status"] == 200, got["predictions"]
    assert got["predictions"] == (most if mode == "rolling" else 1)
    with capsys.disabled():
        print(f"\nlargest request to {which} ({prices:,} prices, {mode}): "
              f"{got['seconds']:.1f} s; server "
              f"RSS idle {got['idle']:.0f} MiB, peak {got['peak']:.0f}, 5 s after "
              f"{got['after']:.0f}")
    assert got["seconds"] < 60 and got["peak"] - got["idle"] < 1024
    assert got["after"] <= 1.10 * got["idle"]
