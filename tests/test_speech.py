"""Speech through the same trainer, MLflow run, registry and pyfunc as prices."""

import io
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from mlflow import MlflowClient

from data_loaders import audio
from models.networks import RecurrentRegressor, logits, pad
from pipeline import tasks
from pipeline.main import main
from tests.conftest import FSDD, fresh_store


def test_padding_never_changes_a_prediction():
    torch.manual_seed(0)
    net = RecurrentRegressor(5, 3, cell="gru", hidden=8, layers=2, norm="layer")
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, 5)).astype(np.float32) for n in (7, 30, 12)]
    alone = logits(net, *pad(xs[:1]))
    together = logits(net, *pad(xs))
    assert torch.allclose(alone[0], together[0], atol=1e-6)


def speech_args(data, tmp, *extra, task="speech-classify"):
    return ["--task", task, "--data", str(data), "--epochs", "3", "--hidden", "16",
            "--feature_cache", str(tmp / "cache"), *extra]


@pytest.mark.slow
def test_speech_run_is_logged_registered_and_serves_audio(store, small_fsdd):
    out = main(speech_args(small_fsdd, store))
    client = MlflowClient()
    run = client.get_run(out["run_id"])
    m = run.data.metrics
    for name in ("test_accuracy", "test_macro_f1", "test_accuracy_majority",
                 "test_accuracy_mlp_mean_pooled", "test_macro_f1_mlp_mean_pooled"):
        assert 0 <= m[name] <= 1, name
    assert m["test_accuracy_majority"] == pytest.approx(1 / 3)
    assert m["bad_files"] == 0
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3
    assert run.data.params["task"] == "speech-classify" and run.data.params["n_mels"] == "40"
    assert "lookback" not in run.data.params and "shift" not in run.data.params
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == \
        {"plots/loss_curves.png", "plots/confusion.png", "plots/memory_horizon.png"}
    assert 0 <= m["memory_horizon"] <= 50
    assert run.inputs.dataset_inputs[0].dataset.name == "audio"
    model = mlflow.pyfunc.load_model("models:/speech-classify@champion")

    # the served model from a file's bytes, and from samples at another rate
    files = sorted(small_fsdd.glob("*_george_[0-4].wav"))
    batch = pd.DataFrame({"audio": [f.read_bytes() for f in files],
                          "utterance_id": [f.stem for f in files]})
    got = model.predict(batch)
    assert got.utterance_id.tolist() == [f.stem for f in files]
    probs = got[[f"p_{c}" for c in ("0", "1", "2")]].to_numpy()
    assert np.allclose(probs.sum(1), 1) and set(got.label) <= {"0", "1", "2", "unknown"}
    unsure = got.label == "unknown"  # below the confidence threshold (unknown_rate)
    assert (got.reason[unsure] == "low confidence").all() and (got.reason[~unsure] == "").all()
    samples, rate = sf.read(files[0], dtype="float32")
    import librosa

    at16k = librosa.resample(samples, orig_sr=rate, target_sr=16000)
    resampled = model.predict(pd.DataFrame({"samples": [at16k.astype(float).tolist()],
                                            "sample_rate": [16000]}))
    assert resampled.label[0] == got.label[0]
    assert resampled.probability[0] == pytest.approx(got.probability[0], abs=0.05)


@pytest.fixture(scope="module")
def classifier(small_fsdd, tmp_path_factory):
    """One trained classifier (a run in a store of its own), as served."""
    folder = tmp_path_factory.mktemp("classifier")
    with fresh_store(folder):
        main(speech_args(small_fsdd, folder, "--epochs", "1"))
        return mlflow.pyfunc.load_model("models:/speech-classify@champion").unwrap_python_model()


@pytest.mark.slow
@pytest.mark.parametrize("row, message", [
    ({"audio": b"not audio at all"}, "column 'audio': cannot decode"),
    ({"audio": b""}, "column 'audio': empty"),
    ({"audio": (FSDD / "7_theo_3.wav").read_bytes()[:3000]},
     r"column 'audio': truncated: the header says \d+ bytes of audio, the file holds 2956"),
    ({"samples": [0.1] * 800, "sample_rate": 0}, "column 'sample_rate': must be a positive"),
    ({"samples": [0.1] * 800}, "column 'sample_rate'"),
    ({"samples": [0.1] * 799 + [float("nan")], "sample_rate": 8000},
     "column 'samples': samples contain NaN or infinity"),
    ({"samples": [0.3] * (61 * 8000), "sample_rate": 8000}, "60 s limit"),
    ({"utterance_id": "x"}, "send 'audio'"),
])
def test_bad_audio_is_named(classifier, row, message):
    with pytest.raises(mlflow.exceptions.MlflowException, match=message):
        classifier.predict(None, pd.DataFrame([row]))


@pytest.mark.slow
def test_a_forecaster_s_mode_is_refused_by_the_classifier(classifier):
    speech = pd.DataFrame({"audio": [(FSDD / "1_nicolas_3.wav").read_bytes()]})
    assert classifier.predict(None, speech, {"mode": "utterance"}).label[0] != "unknown"
    with pytest.raises(mlflow.exceptions.MlflowException,
                       match="params.mode: speech-classify labels whole utterances only "
                             r"\('utterance'\), got 'stream'"):
        classifier.predict(None, speech, {"mode": "stream"})


@pytest.mark.slow
def test_silent_or_too_short_audio_is_unknown_beside_real_speech(classifier):
    speech = (FSDD / "1_nicolas_3.wav").read_bytes()
    rows = pd.DataFrame({"samples": [[0.0] * 8000, [0.3] * 80, None],
                         "sample_rate": [8000, 8000, None], "audio": [None, None, speech]})
    got = classifier.predict(None, rows)
    assert got.label.tolist()[:2] == ["unknown", "unknown"] and got.label[2] != "unknown"
    assert got.reason.tolist() == ["silent", "too short", ""]
    assert np.allclose(got.filter(like="p_").iloc[:2], 1 / 3)


@pytest.mark.slow
def test_bad_files_are_skipped_only_on_request_and_logged(store, small_fsdd, tmp_path):
    data = tmp_path / "with_bad"
    shutil.copytree(small_fsdd, data)
    (data / "2_george_9.wav").write_bytes(b"")
    with pytest.raises(audio.AudioError, match=r"2_george_9.wav: empty"):
        main(speech_args(data, store))
    run_id = main(speech_args(data, store, "--skip_bad", "true", "--epochs", "1"))["run_id"]
    assert MlflowClient().get_run(run_id).data.metrics["bad_files"] == 1
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/data/bad_files.txt")
    assert "2_george_9.wav: empty" in text


@pytest.mark.slow
def test_rest_serving_takes_base64_audio(store, small_fsdd):
    import base64
    import json

    from mlflow_server import post, serving

    main(speech_args(small_fsdd, store, "--epochs", "1"))
    uri = "models:/speech-classify@champion"
    model = mlflow.pyfunc.load_model(uri)
    files = sorted(small_fsdd.glob("*_lucas_[0-2].wav"))
    rows = [[base64.b64encode(f.read_bytes()).decode(), f.stem] for f in files]
    body = {"dataframe_split": {"columns": ["audio", "utterance_id"], "data": rows}}
    with serving(uri, store) as url:
        status, text = post(url, body)
        assert status == 200, text[-500:]
        got = pd.DataFrame(json.loads(text)["predictions"])
        want = model.predict(pd.DataFrame({"audio": [f.read_bytes() for f in files],
                                           "utterance_id": [f.stem for f in files]}))
        assert got.label.tolist() == want.label.tolist()
        assert np.allclose(got.probability, want.probability, atol=1e-6)
        records = [{"audio": a, "utterance_id": u} for a, u in rows]
        columns = {"audio": [a for a, _ in rows], "utterance_id": [u for _, u in rows]}
        for other in ({"inputs": columns}, {"inputs": records}, {"instances": records},
                      {"dataframe_records": records}):
            status, text = post(url, other)
            assert status == 200, text[-300:]
            again = pd.DataFrame(json.loads(text)["predictions"])
            assert again[["utterance_id", "label"]].equals(want[["utterance_id", "label"]]), \
                list(other)
        mixed = [records[0], {"samples": [0.1] * 800, "sample_rate": 8000}]  # NaN samples first
        status, text = post(url, {"dataframe_records": mixed})
        assert status == 200 and json.loads(text)["predictions"][0]["label"] == want.label[0]
        garbage = base64.b64encode(b"definitely not a wav file").decode()
        bad = {
            "cannot decode": {"dataframe_split": {"columns": ["audio"], "data": [[garbage]]}},
            "'sample_rate': must be a positive": {"dataframe_split": {
                "columns": ["samples", "sample_rate"], "data": [[[0.1] * 800, 0]]}},
            "empty batch": {"dataframe_split": {"columns": ["audio"], "data": []}},
            "in the columns this model reads (audio, samples, sample_rate, utterance_id)": {
                "dataframe_split": {"columns": ["wav"], "data": [[garbage]]}},
            "params.mode: speech-classify labels whole utterances only": {
                **body, "params": {"mode": "rolling"}},
            "'samples': one number in each of 800 rows; a row's samples are one clip": {
                "inputs": {"samples": [0.1] * 800, "sample_rate": 8000}},
        }
        for message, request in bad.items():
            status, text = post(url, request)
            assert status == 400 and message in json.loads(text)["message"], text[-300:]
        assert post(url, body)[0] == 200  # still serving


def test_apc_targets_and_stream_never_cross_utterances():
    from pipeline.tasks.speech.common import SpeechData, apc_targets
    from pipeline.tasks.speech.forecast import forecast_stream

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = apc_targets(x, 2)
    assert np.array_equal(y[:4], x[2:]) and np.isnan(y[4:]).all()
    utts = [np.full((5, 1), k, np.float32) for k in (1.0, 2.0, 3.0)]
    data = SpeechData([], utts, utts, np.zeros(3), np.array([0, 1, 0]), ["a"], None, [])
    sx, sy = forecast_stream(data, 2)  # the two training utterances, end to end
    assert sx[:, 0].tolist() == [1] * 5 + [3] * 5
    assert np.isnan(sy[3:5]).all() and np.isnan(sy[8:10]).all()
    assert (sy[:3] == 1).all() and (sy[5:8] == 3).all()  # no target from the next utterance


@pytest.mark.slow
@pytest.mark.parametrize("bptt", ["full", "truncated"])
def test_forecast_run_and_served_error_and_embedding(store, small_fsdd, bptt):
    out = main(speech_args(small_fsdd, store, "--bptt", bptt, "--k1", "10", "--k2", "20",
                           "--lanes", "8", task="speech-forecast"))
    m = MlflowClient().get_run(out["run_id"]).data.metrics
    assert m["test_l1"] > 0 and m["test_l1_copy_last"] > 0
    assert 0 <= m["memory_horizon"] <= 50
    model = mlflow.pyfunc.load_model("models:/speech-forecast@champion")
    files = sorted(small_fsdd.glob("1_nicolas_[0-3].wav"))
    batch = pd.DataFrame({"audio": [f.read_bytes() for f in files]})
    got = model.predict(batch)
    assert list(got.columns) == ["utterance_id", "l1", "embedding"]
    assert all(len(e) == 16 for e in got.embedding) and np.isfinite(got.l1).all()
    alone = model.predict(batch.iloc[:1])  # padding in the batch changes nothing
    assert alone.l1[0] == pytest.approx(got.l1[0], abs=1e-6)
    assert np.allclose(alone.embedding[0], got.embedding[0], atol=1e-6)


@pytest.mark.slow
def test_speech_run_stopped_by_sigterm_resumes_to_the_same_result(store, small_fsdd,
                                                                   monkeypatch):
    from pipeline.core import trainer
    from tests.test_checkpoint import counting

    args = speech_args(small_fsdd, store, "--epochs", "3", "--batch_size", "8",
                       "--dropout", "0.1", "--layers", "2")
    count = [0]
    with monkeypatch.context() as m:
        counting(m, count, module=trainer)
        whole = main(args)
    with monkeypatch.context() as m:
        counting(m, [0], sigterm_at=count[0] // 2, module=trainer)
        with pytest.raises(SystemExit):
            main(args)
    stopped = mlflow.search_runs(experiment_names=["speech-classify"],
                                 filter_string="status = 'KILLED'",
                                 output_format="list")[0].info.run_id
    resumed = main(["--resume_run_id", stopped])
    assert resumed["run_id"] == stopped
    assert resumed["table"] == whole["table"]
    client = MlflowClient()
    assert ([m.value for m in client.get_metric_history(stopped, "val_accuracy")]
            == [m.value for m in client.get_metric_history(whole["run_id"], "val_accuracy")])


def test_speech_memory_horizon_reaches_back_and_skips_too_short_utterances():
    from models.networks import build_model
    from pipeline.core.config import build_config
    from pipeline.tasks.speech.common import SpeechData

    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((n, 8)).astype("float32") for n in (20, 18, 25, 9, 20)]
    data = SpeechData(utts=[], raw=frames, x=frames,
                      y=np.array([0, 1, 0, 1, 0]), split=np.array([0, 1, 1, 1, 2]),
                      classes=["a", "b"], norm=None, bad=[])
    torch.manual_seed(0)
    spec = {"cell": "gru", "hidden": 8, "layers": 1, "dropout": 0.0, "norm": "none",
            "init": "orthogonal", "lookback": 1}
    classify = tasks.load("speech-classify")
    norms, reach = classify.horizon(build_model(spec, 8, 2),
                                    build_config({"task": "speech-classify"}), data)
    assert len(norms) == 18 and 1 <= reach <= 17  # k up to the median length (18) less one
    forecast = tasks.load("speech-forecast")
    cfg = build_config({"task": "speech-forecast", "shift": 3})
    norms, _ = forecast.horizon(build_model(spec, 8, 8), cfg, data)
    assert len(norms) == 15  # the last 3 frames have no target
    too_far = build_config({"task": "speech-forecast", "shift": 30})
    assert forecast.horizon(build_model(spec, 8, 8), too_far, data) is None


def _flac(seconds: float, rate: int, channels: int) -> bytes:
    """Silence in a FLAC file: tiny on the wire, large once decoded."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros((int(seconds * rate), channels), np.int16), rate, format="FLAC")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("clips, message", [
    ((1, 61, 44100, 2), "row 0, column 'audio': 61 s is longer than the 60 s limit per clip"),
    ((1, 60 + 1 / 48000, 48000, 1), "row 0, column 'audio': 60.00002 s is longer than the "
                                    "60 s limit per clip"),
    ((1, 20, 96000, 4), "row 0, column 'audio': 4 channel(s) at 96000 Hz for 20.0 s are "
                        "7,680,000 samples; the limit is 5,760,000 per clip"),
    ((11, 59, 8000, 1), "request has 649.0 s of audio; the limit is 600 s per request: "
                        "split the clips across 2 or more requests"),
])
def test_audio_limits_are_checked_from_the_headers_before_decoding(classifier, monkeypatch,
                                                                   clips, message):
    count, seconds, rate, channels = clips
    frame = pd.DataFrame({"audio": [_flac(seconds, rate, channels)] * count})
    monkeypatch.setattr(audio, "decode", lambda *a: pytest.fail("decoded before the checks"))
    with pytest.raises(mlflow.exceptions.MlflowException) as err:
        classifier.predict(None, frame)
    assert message in err.value.message


@pytest.mark.slow
def test_an_absurd_sample_rate_in_a_header_is_named(classifier):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(100, np.int16), 10 ** 9, format="WAV")  # FLAC refuses such rates
    with pytest.raises(mlflow.exceptions.MlflowException) as err:
        classifier.predict(None, pd.DataFrame({"audio": [buf.getvalue()]}))
    assert err.value.message == \
        "row 0, column 'audio': a sample rate of 1e+09 Hz; expected 1,000 to 384,000 Hz"


@pytest.mark.slow
def test_base64_audio_is_read_in_the_shape_every_request_format_gives(classifier):
    import base64

    wav = (FSDD / "3_george_7.wav").read_bytes()
    text = base64.b64encode(wav).decode()
    want = classifier.predict(None, pd.DataFrame({"audio": [wav]}))
    mime = base64.encodebytes(wav).decode()  # a line break every 76 characters, as MLflow
    for cell in (text, text.encode(), np.array([text.encode()]), np.bytes_(text.encode()),
                 mime):  # stores the input example
        got = classifier.predict(None, pd.DataFrame({"audio": [cell],
                                                     "utterance_id": [np.array(["u"])]}))
        assert got.label[0] == want.label[0] and got.probability[0] == want.probability[0]
        assert got.utterance_id[0] == "u"


@pytest.mark.slow
@pytest.mark.parametrize("row, message", [
    ({"samples": [0.1] * 799 + [1e30], "sample_rate": 8000},
     "row 0, column 'samples': out of range: samples reach 1e+30"),
    ({"audio": "!!!not base64@@@"}, "row 0, column 'audio': not base64 text"),
    ({"audio": 5}, "row 0, column 'audio': expected the file's bytes (base64 over REST), got int"),
    ({"samples": [[0.1, 0.1]] * 400, "sample_rate": 8000},
     "row 0, column 'samples': expected an array of numbers"),
    ({"samples": ["0.1"] * 800, "sample_rate": 8000},
     "row 0, column 'samples': position 0: expected a number, got '0.1'"),
    ({"samples": [0.1] * 799 + [[0.1]], "sample_rate": 8000},  # ragged: np.size fails
     "row 0, column 'samples': expected an array of numbers"),
    ({"samples": [[0.1]], "sample_rate": 8000}, "column 'samples': expected an array of"),
    ({"samples": [0.1] * 799 + [True], "sample_rate": 8000},  # numpy would read 1.0
     "row 0, column 'samples': position 799: expected a number, got True"),
    ({"samples": (0.1, np.True_), "sample_rate": 8000}, "position 1: expected a number, got"),
    ({"samples": np.array(["0.1"] * 800), "sample_rate": 8000},  # instances: all text
     "row 0, column 'samples': expected numbers, got an array of text ('0.1', ...)"),
    ({"samples": [0.1] * 799 + [10 ** 30], "sample_rate": 8000},  # past int64: an object array
     "row 0, column 'samples': out of range: samples reach 1e+30"),
    ({"samples": [0.1] * 799 + [10 ** 400], "sample_rate": 8000},
     "row 0, column 'samples': position 799: 1000000"),
    ({"samples": [], "sample_rate": 8000}, "row 0, column 'samples': no samples: send at"),
    ({"samples": [0.1] * 800, "sample_rate": 8000, "audio": (FSDD / "1_nicolas_3.wav")
      .read_bytes()}, "row 0: send one of 'audio' and 'samples', not both"),
    ({"samples": [0.1] * 800, "sample_rate": 8000.5},
     "row 0, column 'sample_rate': must be a positive whole number of Hz"),
    ({"samples": [0.1] * 800, "sample_rate": "8000"}, "column 'sample_rate': must be a positive"),
    ({"samples": [0.1] * 800, "sample_rate": 10 ** 12},
     "row 0, column 'sample_rate': a sample rate of 1e+12 Hz; expected 1,000 to 384,000 Hz"),
    ({"samples": [0.1] * 800, "sample_rate": 10 ** 400},
     "row 0, column 'sample_rate': a sample rate of over 1e+18 Hz"),
    ({"samples": [0.1] * 799 + [1e308], "sample_rate": 8000},
     "row 0, column 'samples': out of range: samples reach 1e+308"),
    ({"samples": [0.1] * 800, "sample_rate": 16000, "utterance_id": "u" * 300},
     "row 0, column 'utterance_id': 300 characters; the limit is 256"),
])
def test_absurd_samples_and_ids_are_named(classifier, row, message):
    with pytest.raises(mlflow.exceptions.MlflowException) as err:
        classifier.predict(None, pd.DataFrame([row]))
    assert message in err.value.message


def _long_clip(files: list, seconds: float = 60.0, rate: int = 48_000) -> bytes:
    """Real recordings one after another to `seconds` of 16-bit stereo WAV at `rate` (each
    8 kHz sample repeated: what matters here is the size)."""
    parts, total = [], 0
    while total < seconds * 8000:
        for f in files:
            x, _ = sf.read(f, dtype="float32")
            parts += [x, np.zeros(1600, np.float32)]
            total += len(x) + 1600
    mono = np.repeat(np.concatenate(parts)[: int(seconds * 8000)], rate // 8000)
    buf = io.BytesIO()
    sf.write(buf, np.stack([mono, mono], 1), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.slow
def test_the_largest_audio_request_allowed_gives_its_memory_back(store, small_fsdd, capsys):
    """10 clips of 60 s of 48 kHz stereo (600 s, every clip at its sample limit), base64
    over REST to the preset's network: 200 with a label per clip, at most 1 GiB above
    the idle server while it runs, back within 10 % of idle 5 s after."""
    import base64

    from mlflow_server import memory_of_request, serving

    from models.speech_model import MAX_CLIP_SAMPLES, MAX_REQUEST_SECONDS

    main(speech_args(small_fsdd, store, "--preset", "speech-fsdd", "--epochs", "1",
                     "--hidden", "128", "--synthetic_voices", "0", "--unknown_words", "0",
                     "--nonspeech", "4"))
    clip = base64.b64encode(_long_clip(sorted(small_fsdd.glob("*.wav")))).decode()
    count = int(MAX_REQUEST_SECONDS // 60)
    assert 60 * 48_000 * 2 == MAX_CLIP_SAMPLES
    body = {"dataframe_split": {"columns": ["audio"], "data": [[clip]] * count}}
    small = {"dataframe_split": {"columns": ["audio"], "data": [[base64.b64encode(
        (FSDD / "1_nicolas_3.wav").read_bytes()).decode()]]}}
    with serving("models:/speech-classify@champion", store) as url:
        got = memory_of_request(url, small, body)
    assert got["status"] == 200, got["predictions"]
    assert got["predictions"] == count
    with capsys.disabled():
        print(f"\nlargest audio request ({count} x 60 s, 48 kHz stereo): {got['seconds']:.1f} s;"
              f" server RSS idle {got['idle']:.0f} MiB, peak {got['peak']:.0f}, 5 s after "
              f"{got['after']:.0f}")
    assert got["seconds"] < 60 and got["peak"] - got["idle"] < 1024
    assert got["after"] <= 1.10 * got["idle"]


@pytest.mark.slow
def test_a_damaged_stored_temperature_is_a_400_never_a_nan_answer(classifier):
    import copy

    damaged = copy.copy(classifier)
    damaged.spec = {**classifier.spec, "unknown": {**classifier.spec["unknown"],
                                                   "temperature": float("nan")}}
    wav = (FSDD / "3_george_7.wav").read_bytes()
    with pytest.raises(mlflow.exceptions.MlflowException, match="non-finite probabilities"):
        damaged.predict(None, pd.DataFrame({"audio": [wav]}))


@pytest.mark.slow
def test_an_ensemble_trains_is_logged_and_serves_as_one_model(store, small_fsdd):
    # one direction, read at the last frame: the recipe's (bidirectional, mean) is tested
    # by test_speech_recipe.py
    out = main(speech_args(small_fsdd, store, "--ensemble", "global, utterance",
                           "--epochs", "15", "--lr", "0.01"))
    run = MlflowClient().get_run(out["run_id"])
    assert run.data.params["ensemble"] == "global, utterance"
    assert run.data.metrics["best_val_loss"] < 0.8 * np.log(3)  # both learn: chance is ln 3
    assert "memory_horizon" not in run.data.metrics  # each network has a state of its own
    served = mlflow.pyfunc.load_model("models:/speech-classify@champion")
    net = served.unwrap_python_model().net
    assert net.views == ["global", "utterance"]
    first, second = (list(m.parameters())[0] for m in net.members)
    assert not torch.equal(first, second)
    files = sorted(small_fsdd.glob("*_lucas_[0-4].wav"))
    got = served.predict(pd.DataFrame({"audio": [f.read_bytes() for f in files]}))
    p = got[["p_0", "p_1", "p_2"]].to_numpy()
    assert np.allclose(p.sum(1), 1, atol=1e-6) and set(got["label"]) <= {"0", "1", "2", "unknown"}


@pytest.mark.slow
def test_a_speech_forecast_model_pretrains_the_classifier_s_recurrent_layers(store, small_fsdd):
    """init_from across the two speech tasks: the forecaster's body, never its head; the
    backward direction, which a forecaster cannot have, stays at its initial values."""
    common = ["--data", str(small_fsdd), "--epochs", "1", "--hidden", "16",
              "--feature_cache", str(store / "cache")]
    main(["--task", "speech-forecast", *common])
    uri = "models:/speech-forecast@champion"
    forecaster = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    body = forecaster.net.state_dict()
    spec = {**forecaster.spec, "task": "speech-classify", "n_out": 4,
            "model": {**forecaster.spec["model"], "bidirectional": True, "readout": "mean"}}
    from models.networks import build_model
    from pipeline.core.tracking import load_initial_weights

    net = build_model(spec["model"], spec["n_in"], spec["n_out"])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    said = load_initial_weights(net, uri, spec)
    assert said.startswith(f"4 of 10 weight tensors from {uri} (a speech-forecast model)")
    assert "cells.0.weight_ih_l0_reverse" in said and "head.weight" in said
    got = net.state_dict()
    assert all(torch.equal(got[k], body[k]) for k in body if k.startswith("cells."))
    assert all(torch.equal(got[k], before[k]) for k in got if k not in body or "head" in k)
    out = main(["--task", "speech-classify", "--bidirectional", "true", "--init_from", uri,
                *common, "--register", "false"])
    assert MlflowClient().get_run(out["run_id"]).data.tags["init_from_weights"] == said
    with pytest.raises(ValueError, match=r"inputs differ from this speech-classify model's: "
                                         r"n_in: 40 there, 32 here"):
        main(["--task", "speech-classify", "--init_from", uri, "--n_mels", "32", *common])
    with pytest.raises(ValueError, match=r"does not fit this network; cells.0.weight_ih_l0: "
                                         r"\[64, 40\] there, \[128, 40\] here"):
        main(["--task", "speech-classify", "--init_from", uri, *common[:4], "--hidden", "32",
              "--feature_cache", str(store / "cache")])
