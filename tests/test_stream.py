"""mode=stream: a series sent in pieces with the state each response returns gets what one
`rolling` pass over the whole series gives; bad states are named 400s (models/stream.py).

In process here, for every kind of price model (stateful and windowed, mse, gaussian and
quantile heads, plain and scale-free features); over the real server in
test_stream_rest.py.
"""

import base64
import json
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from data_loaders.prices import read_price_csv
from models import stream
from models.price_model import request_row
from tests.conftest import ROOT, bundled_market, price_forecaster

KINDS = {
    "gru-stateful-mse": dict(bptt="truncated"),
    "gru-windowed-gaussian": dict(bptt="full", loss="gaussian"),
    "mlp-quantile": dict(bptt="full", cell="mlp", loss="quantile", quantiles=(0.1, 0.5, 0.9)),
    "lstm-stateful-scale-free-quantile": dict(bptt="truncated", cell="lstm", layers=2,
                                              loss="quantile", quantiles=(0.05, 0.5, 0.95),
                                              scale_free=True),
    "gru-windowed-scale-free-gaussian": dict(bptt="full", loss="gaussian", scale_free=True),
    "gru-stateful-scale-free-gaussian-market": dict(bptt="truncated", loss="gaussian",
                                                    scale_free=True, market=True),
}
RTOL = 1e-5  # relative to each forecast column's scale (float32 networks)


def series(name="SPY", days=1300) -> dict:
    """A request row of the last `days` of a bundled ticker, with the market's columns
    (which the models that do not read the market ignore)."""
    frame, _ = read_price_csv(ROOT / "data" / "prices" / f"{name}.csv")
    return request_row(frame.iloc[-days:], name, ["close", "high", "low", "volume"],
                       bundled_market())


def piece(row: dict, a: int, b: int, state: str | None = None) -> dict:
    part = {k: v[a:b] if isinstance(v, list) else v for k, v in row.items()}
    return part | ({"state": state} if state is not None else {})


def streamed(model, row: dict, cuts: list[int]) -> tuple[pd.DataFrame, str]:
    """The forecasts of `row` sent piece by piece (cut at `cuts`), and the last state."""
    state, parts = None, []
    for a, b in zip(cuts, cuts[1:], strict=False):
        out = model.predict(None, pd.DataFrame([piece(row, a, b, state)]), {"mode": "stream"})
        assert (out.state.iloc[:-1] == "").all() and out.state.iloc[-1]
        state = out.state.iloc[-1]
        parts.append(out)
    return pd.concat(parts, ignore_index=True), state


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert got.step.tolist() == want.step.tolist()
    assert got.date.tolist() == want.date.tolist()
    numbers = [c for c in want.columns if want[c].dtype.kind == "f"]
    scale = np.maximum(np.abs(want[numbers].to_numpy()).max(axis=0), 1e-12)  # (a column of 0)
    error = np.abs(got[numbers].to_numpy() - want[numbers].to_numpy()) / scale
    assert error.max() <= RTOL, dict(zip(numbers, error.max(axis=0), strict=True))


@pytest.fixture(scope="module", params=list(KINDS))
def model(request, tmp_path_factory):
    return price_forecaster(tmp_path_factory.mktemp(request.param), **KINDS[request.param])


def test_pieces_of_any_size_give_one_rolling_pass(model):
    row = series()
    want = model.predict(None, pd.DataFrame([row]), {"mode": "rolling"})
    n, first = len(row["close"]), model.first_prices()
    cuts = sorted(np.random.default_rng(0).choice(np.arange(first + 1, n - 10), 25,
                                                  replace=False))
    # random sizes, then single steps; past the scale-free context (1000 days) too
    got, _ = streamed(model, row, [0, first, *cuts, *range(n - 10, n + 1)])
    assert_same(got, want)


def test_one_request_streams_many_series_and_the_same_state_gives_the_same_answer(model):
    rows = [series("SPY", 300), series("AAPL", 200)]
    first = [model.predict(None, pd.DataFrame([piece(r, 0, len(r["close"]) - k)]),
                           {"mode": "stream"}) for r, k in zip(rows, (5, 1), strict=True)]
    body = pd.DataFrame([piece(r, len(r["close"]) - k, len(r["close"]), f.state.iloc[-1])
                         for r, f, k in zip(rows, first, (5, 1), strict=True)])
    again = [model.predict(None, body, {"mode": "stream"}) for _ in range(2)]
    pd.testing.assert_frame_equal(again[0], again[1])
    last = model.predict(None, body, {"mode": "stream", "last_only": True})
    pd.testing.assert_frame_equal(last, again[0][again[0].state != ""].reset_index(drop=True))
    assert again[0].series_id.tolist() == ["SPY"] * 5 + ["AAPL"]
    assert (again[0].state != "").tolist() == [False] * 4 + [True, True]
    for r, f in zip(rows, first, strict=True):
        whole = model.predict(None, pd.DataFrame([r]), {"mode": "rolling"})
        got = pd.concat([f, again[0][again[0].series_id == r["series_id"]]], ignore_index=True)
        assert_same(got, whole)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The kind of model `make demo` registers: stateful, a normal forecast."""
    return price_forecaster(tmp_path_factory.mktemp("demo"), bptt="truncated", loss="gaussian")


def state_of(model, row: dict, upto: int) -> str:
    return model.predict(None, pd.DataFrame([piece(row, 0, upto)]),
                         {"mode": "stream"}).state.iloc[-1]


def refused(model, row: dict, params=None) -> str:
    """The error for `row`, sent as the second row after a good one."""
    good = piece(series("AAPL", 60), 0, 60)
    with pytest.raises(MlflowException) as err:
        model.predict(None, pd.DataFrame([good, row]), params or {"mode": "stream"})
    return err.value.message


def forged(token: str, **changes) -> str:
    """The token with header fields or bytes changed and a valid checksum again."""
    raw = base64.b64decode(token)
    magic, version, _, size = stream.PREFIX.unpack_from(raw)
    header = json.loads(raw[stream.PREFIX.size:stream.PREFIX.size + size]) | changes.pop(
        "header", {})
    arrays = changes.pop("arrays", raw[stream.PREFIX.size + size:])
    text = json.dumps(header).encode()
    body = text + arrays
    return base64.b64encode(stream.PREFIX.pack(magic, changes.get("version", version),
                                               zlib.crc32(body), len(text)) + body).decode()


def test_the_token_is_compact_and_names_its_model(demo):
    row = series(days=120)
    token = state_of(demo, row, 120)
    assert len(token) < 400  # last prices, date, hidden state: a few hundred bytes
    raw = base64.b64decode(token)
    size = stream.PREFIX.unpack_from(raw)[3]
    header = json.loads(raw[stream.PREFIX.size:stream.PREFIX.size + size])
    assert header == {"model": demo.identity, "series": "SPY", "date": row["dates"][-1],
                      "steps": 119, "rows": 0}


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[:-8], "checksum does not match"),
    (lambda t: t[:10] + ("A" if t[10] != "A" else "B") + t[11:], "checksum does not match"),
    (lambda t: "not base64!", "not base64"),
    (lambda t: base64.b64encode(b"hello world").decode(), "not a state token"),
    (lambda t: "A" * 100_000, "longer than any state of this model"),
    (lambda t: 12345, "expected the text a previous response returned"),
    (lambda t: "", "empty: send null (or no state) to start a series"),
])
def test_damaged_tokens_are_named_400s(demo, damage, message):
    row = series(days=130)
    token = state_of(demo, row, 120)
    text = refused(demo, piece(row, 120, 130, damage(token)))
    assert text.startswith("row 1, column 'state':") and message in text, text


def test_tokens_of_another_model_or_version_and_impossible_content_are_refused(demo, tmp_path):
    row = series(days=130)
    token = state_of(demo, row, 120)
    other = price_forecaster(tmp_path, bptt="truncated", cell="lstm")
    cases = {
        "another model": (other, token),
        "format version 7": (demo, forged(token, version=7)),
        "impossible counts": (demo, forged(token, header={"steps": -3})),
        "impossible counts: 3 steps": (demo, forged(token, header={"steps": 3})),
        "its last high is -1": (demo, forged(token, arrays=struct.pack(
            "<d", -1.0) + base64.b64decode(token)[-(demo.layout.nbytes(0)) + 8:])),
        "header is not a state's header": (demo, forged(token, header={"extra": 1})),
        "other shapes": (demo, forged(token, arrays=b"\0" * 12)),
        "NaN or infinity in its hidden": (demo, forged(token, arrays=base64.b64decode(
            token)[-(demo.layout.nbytes(0)):-4] + struct.pack("<f", float("nan")))),
        "is not a date": (demo, forged(token, header={"date": "yesterday"})),
        "its last date 'today'": (demo, forged(token, header={"date": "today"})),
        "the state of series 'AAPL', sent for 'SPY'": (demo, forged(token, header={
            "series": "AAPL"})),
        "its recurrent state is beyond": (demo, forged(token, arrays=base64.b64decode(
            token)[-(demo.layout.nbytes(0)):-4] + struct.pack("<f", 1e30))),
        "its last high is below its last low": (demo, forged(token, arrays=struct.pack(
            "<dd", 1.0, 2.0) + base64.b64decode(token)[-(demo.layout.nbytes(0)) + 16:])),
    }
    for message, (model, bad_token) in cases.items():
        text = refused(model, piece(row, 120, 130, bad_token))
        assert text.startswith("row 1, column 'state':") and message in text, (message, text)


@pytest.mark.parametrize("null", [None, np.nan, pd.NA])
def test_a_null_state_starts_the_series(demo, null):
    """A null, whatever form the column gives it (a Parquet column of nulls: pd.NA)."""
    row = series(days=80)
    fresh = demo.predict(None, pd.DataFrame([row]), {"mode": "stream"})
    frame = pd.DataFrame([row | {"state": null}]).astype({"state": "object"})
    pd.testing.assert_frame_equal(demo.predict(None, frame, {"mode": "stream"}), fresh)


def test_dates_must_continue_and_a_state_needs_mode_stream(demo):
    row = series(days=130)
    token = state_of(demo, row, 120)
    again = refused(demo, piece(row, 119, 125, token))
    assert again.startswith("row 1, column 'dates': position 0:") and "does not continue" in again
    undated = {k: v for k, v in piece(row, 120, 125, token).items() if k != "dates"}
    assert "send the new prices' dates" in refused(demo, undated)
    text = refused(demo, piece(row, 0, 130, token), {"mode": "rolling"})
    assert text.startswith("row 1, column 'state': a state is read only with params mode")
    text = refused(demo, piece(row, 0, 130), {"mode": "rolling", "last_only": True})
    assert text.startswith("params.last_only is true or false, and true only with mode")
    short = refused(demo, piece(row, 0, 5))
    assert short.startswith("row 1, column 'close': 5 prices") and "to start a series" in short
    nothing = refused(demo, piece(row, 120, 120, token))
    assert nothing.startswith("row 1, column 'close': no new prices: a streamed piece has at")
