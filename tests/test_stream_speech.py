"""speech-forecast frame by frame: audio sent in pieces of any number of samples, each with
the state the last response returned, gets the forecasts one `rolling` pass over the
whole audio gives (framing across piece boundaries carried in the state); in process for
a GRU and a two-layer LSTM, and over the real server."""

import dataclasses
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow_server import post, serving

from data_loaders.audio import FeatureSettings
from data_loaders.sequences import Normaliser
from models.networks import build_model
from models.served import log_served, write_artifacts
from models.speech_model import SpeechForecaster
from pipeline.core.cli import UsageError
from tests.conftest import fresh_store

RATE = 8000


def forecaster(folder, cell="gru", layers=1, **spec) -> SpeechForecaster:
    """A speech-forecast model with random weights, loaded as MLflow loads it."""
    torch.manual_seed(0)
    settings = dataclasses.asdict(FeatureSettings())
    spec = {"task": "speech-forecast", "n_in": 40, "n_out": 40, "shift": 2, "audio": settings,
            "normalise": "global", "model": {"cell": cell, "hidden": 8, "layers": layers,
                                             "dropout": 0.0, "norm": "none",
                                             "init": "orthogonal", "lookback": 1}} | spec
    net = build_model(spec["model"], 40, 40)
    norm = Normaliser(np.full(40, -6.0), np.full(40, 2.5)).to_dict()
    return SpeechForecaster().load(write_artifacts(folder, net, spec, norm))


def audio(seconds=1.3, seed=0) -> np.ndarray:
    """A gliding tone in noise, samples in [-1, 1]."""
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    return (0.4 * np.sin(2 * np.pi * (300 + 400 * t) * t)
            + 0.05 * rng.standard_normal(len(t))).astype(np.float64)


def request(samples, state=None, uid="u1") -> pd.DataFrame:
    row = {"samples": list(samples), "sample_rate": RATE, "utterance_id": uid}
    return pd.DataFrame([row | ({"state": state} if state is not None else {})])


def streamed(predict, samples, cuts) -> pd.DataFrame:
    state, parts = None, []
    for a, b in zip(cuts, cuts[1:], strict=False):
        out = predict(request(samples[a:b], state), {"mode": "stream"})
        assert out.state.iloc[-1] and (out.state.iloc[:-1] == "").all()
        state = out.state.iloc[-1]
        parts.append(out[out.frame >= 0])
    return pd.concat(parts, ignore_index=True)


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert got.frame.tolist() == want.frame.tolist() == list(range(len(want)))
    g, w = (np.stack(f.forecast.map(np.asarray).tolist()) for f in (got, want))
    assert np.abs(g - w).max() <= 1e-5 * np.abs(w).max()


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 2)])
def test_audio_in_pieces_of_any_size_gives_one_rolling_pass(tmp_path, cell, layers):
    model = forecaster(tmp_path, cell, layers)
    samples = audio()
    want = model.predict(None, request(samples), {"mode": "rolling"})
    assert len(want) == 1 + (len(samples) - 200) // 80  # 25 ms windows, 10 ms hops
    cuts = sorted(np.random.default_rng(1).choice(np.arange(1, len(samples)), 40,
                                                  replace=False))
    got = streamed(lambda f, p: model.predict(None, f, p), samples,
                   [0, 1, 2, 150, 151, *cuts, len(samples)])  # a sample, less than a window
    assert_same(got, want)


def test_bad_audio_states_and_models_that_cannot_stream_are_named(tmp_path):
    model = forecaster(tmp_path / "a")
    samples = audio()
    state = model.predict(None, request(samples[:1000]), {"mode": "stream"}).state.iloc[-1]
    cases = {
        "row 0, column 'state': the state of 'u1', sent for 'u2' (utterance_id 'u2')":
            request(samples[1000:2000], state, uid="u2"),
        "row 0, column 'state': a state is read only with params mode 'stream'":
            request(samples[1000:2000], state),
        "row 0, column 'samples': frame by frame, send 'samples' at this model's 8000 Hz":
            request(samples[:1000]).assign(sample_rate=16000),
        "row 0, column 'state': the state of another model":
            request(samples[1000:2000], forecaster(tmp_path / "b", "lstm").predict(
                None, request(samples[:1000]), {"mode": "stream"}).state.iloc[-1]),
    }
    for message, frame in cases.items():
        params = {"mode": "rolling" if "only with" in message else "stream"}
        with pytest.raises(MlflowException) as err:
            model.predict(None, frame, params)
        assert err.value.message.startswith(message), err.value.message
    minute = np.zeros(60 * RATE)
    five = pd.concat([request(minute, uid=f"u{k}") for k in range(5)], ignore_index=True)
    with pytest.raises(MlflowException, match="^request has 1,199,600 forecast values"):
        model.predict(None, five, {"mode": "rolling"})  # 5 x 5,998 frames x 40 bands
    nothing = request(np.zeros(0), state)
    with pytest.raises(MlflowException, match="^row 0, column 'samples': no samples: send at"):
        model.predict(None, nothing, {"mode": "stream"})
    ragged = pd.DataFrame({"samples": [[0.1, [0.2]]], "sample_rate": [RATE]})  # np.size fails
    for mode in ("rolling", "stream"):
        with pytest.raises(MlflowException, match="^row 0, column 'samples': expected an array"):
            model.predict(None, ragged, {"mode": mode})
    cmvn = forecaster(tmp_path / "c", normalise="utterance")
    cmvn.norm = None  # per-utterance statistics: what a model without a normaliser has
    with pytest.raises(MlflowException, match="cannot forecast frame by frame: it normalises"):
        cmvn.predict(None, request(samples), {"mode": "rolling"})


@pytest.mark.slow
def test_audio_streams_over_the_real_server(tmp_path):
    model = forecaster(tmp_path / "m")
    samples = audio(seconds=0.8)
    with fresh_store(tmp_path):
        mlflow.set_experiment("speech-stream")
        with mlflow.start_run() as run:
            log_served(SpeechForecaster, model.net, model.spec, model.normaliser,
                       request(samples[:4000]))
        with serving(f"runs:/{run.info.run_id}/model", tmp_path) as url:
            def predict(frame, params):
                body = {"dataframe_split": frame.to_dict(orient="split", index=False),
                        "params": params}
                status, text = post(url, body)
                assert status == 200, text[-500:]
                return pd.DataFrame(json.loads(text)["predictions"])

            want = predict(request(samples), {"mode": "rolling"})
            got = streamed(predict, samples, [0, 37, 1000, 1001, 3333, 5000, len(samples)])
    assert_same(got, want)


def test_a_state_continues_what_the_model_accepted(tmp_path):
    """Samples a little beyond ±1 (int16's -32768 / 32767) carried in a state, and a row
    without an utterance_id (its state then names no utterance), continue."""
    model = forecaster(tmp_path)
    samples = audio()
    samples[990] = -32768 / 32767
    whole = model.predict(None, request(samples), {"mode": "rolling"})
    first = model.predict(None, request(samples[:1000]).drop(columns="utterance_id"),
                          {"mode": "stream"})
    rest = model.predict(None, request(samples[1000:], first.state.iloc[-1]),
                         {"mode": "stream"})
    assert_same(pd.concat([first, rest], ignore_index=True), whole)


def test_batch_predict_without_a_mode_takes_the_model_s_default(tmp_path):
    """`predict` sends `mode` only when given: speech-forecast's default is per utterance
    (a price model's `last` would be refused)."""
    from models.speech_model import audio_request
    from pipeline import predict
    from tests.conftest import FSDD

    wav = sorted(FSDD.glob("*.wav"))[:2]
    model = forecaster(tmp_path / "m")
    with fresh_store(tmp_path):
        mlflow.set_experiment("speech-predict")
        with mlflow.start_run() as run:
            log_served(SpeechForecaster, model.net, model.spec, model.normaliser,
                       audio_request(wav[:1], ["a"]))
        (tmp_path / "in").mkdir()
        for w in wav:
            (tmp_path / "in" / w.name).write_bytes(w.read_bytes())
        out = predict.main(["--model_uri", f"runs:/{run.info.run_id}/model", "--input",
                            str(tmp_path / "in"), "--output", str(tmp_path / "o.csv")])
        for options, named in ((["--repair=drop"], "repair"), (["--mode", "rolling"], "mode"),
                               (["--market", "m.csv", "--repair", "none"], "market, repair")):
            with pytest.raises(UsageError, match=f"^{named}: options of price models; .* is "
                                                 "a speech-forecast model, and predict reads"):
                predict.main(["--model_uri", f"runs:/{run.info.run_id}/model", "--input",
                              str(tmp_path / "in"), "--output", str(tmp_path / "x.csv"),
                              *options])
        assert not (tmp_path / "x.csv").exists()
    assert list(out.columns) == ["utterance_id", "l1", "embedding"] and len(out) == 2
