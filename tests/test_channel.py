"""Channel augmentation (data_loaders/channel.py): seeded, each link doing what it says,
and in training (speech-classify's `channel`) listed per file, never in serving."""

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from scipy.signal import freqz

from data_loaders import audio, channel
from pipeline.main import main
from tests.conftest import FSDD

RATE = 8000


def tone(hz: float, seconds: float = 0.5, level: float = 0.5) -> np.ndarray:
    return (level * np.sin(2 * np.pi * hz * np.arange(int(seconds * RATE)) / RATE)
            ).astype(np.float32)


def power(y: np.ndarray) -> float:
    middle = y[len(y) // 4: -len(y) // 4]  # away from the filters' start and end
    return float(np.mean(middle.astype(np.float64) ** 2))


def test_a_seed_draws_the_same_chain_and_another_seed_another():
    draws = [channel.describe(channel.draw(np.random.default_rng([0, k]), RATE))
             for k in range(40)]
    again = [channel.describe(channel.draw(np.random.default_rng([0, k]), RATE))
             for k in range(40)]
    assert draws == again and len(set(draws)) >= 35 and all(draws)  # "mu-law" alone may recur
    used = {link for k in range(40) for link, _ in channel.draw(np.random.default_rng([0, k]),
                                                                 RATE)}
    assert used == set(channel.LINKS)


def test_chains_draw_and_apply_at_the_lowest_sample_rate():
    x = np.sin(2 * np.pi * 440 * np.arange(4000) / 4000).astype(np.float32) * 0.5
    for k in range(30):
        chain = channel.draw(np.random.default_rng([1, k]), 4000)
        y = channel.apply(x, 4000, chain)
        assert len(y) == len(x) and np.isfinite(y).all(), channel.describe(chain)
        assert all(s["middle"] == 4000 for link, s in chain if link == "resample")


def test_each_link_changes_the_signal_as_it_says():
    x = tone(3000) + tone(1000)
    through = lambda *links: channel.apply(x, RATE, list(links))  # noqa: E731
    low = through(("resample", {"middle": 4000, "down": "soxr_hq", "up": "soxr_hq"}))
    assert len(low) == len(x) and power(low) == pytest.approx(power(tone(1000)), rel=0.05)
    band = through(("band", {"low": 300, "high": 2000}))
    assert power(band) == pytest.approx(power(tone(1000)), rel=0.1)
    quiet = through(("gain", {"db": -20}))
    assert power(quiet) == pytest.approx(power(x) / 100, rel=1e-3)
    coded = through(("mulaw", {}))
    assert len(np.unique(coded)) <= 256 and 0 < np.abs(coded - x).max() < 0.05
    loud = channel.apply(x, RATE, [("gain", {"db": 6})])
    assert np.abs(loud).max() <= 1  # clipped at full scale, as a recorder would
    b, a = channel.peaking(1200, 8.0, 1.0, RATE)
    _, h = freqz(b, a, worN=[1200, 3900], fs=RATE)
    assert 20 * np.log10(abs(h[0])) == pytest.approx(8.0, abs=1e-6)
    assert abs(20 * np.log10(abs(h[1]))) < 1.0


def test_channel_features_are_cached_by_content_and_chain(tmp_path):
    s = audio.FeatureSettings()
    utts = [audio.Utterance(p, "3", "george", 0) for p in sorted(FSDD.glob("3_george_[12].wav"))]
    feats, words = audio.channel_features(utts, s, 2, seed=0, cache_dir=tmp_path, progress=False)
    assert len(feats) == len(words) == 2 and all(len(f) == 2 for f in feats)
    clean = audio.load_features(utts, s, None, progress=False)[0]
    assert not any(np.array_equal(f, c) for k in feats for f, c in zip(k, clean, strict=True))
    again, words2 = audio.channel_features(utts, s, 2, seed=0, cache_dir=tmp_path,
                                           progress=False)
    assert words2 == words and all(np.array_equal(a, b) for k, j in zip(feats, again,
                                   strict=True) for a, b in zip(k, j, strict=True))
    other = audio.channel_features(utts, s, 2, seed=1, cache_dir=tmp_path, progress=False)[1]
    assert other != words
    assert len(list((tmp_path / s.key()).glob("*.npy"))) == 8  # 2 files x 2 variants x 2 seeds


@pytest.mark.slow
def test_training_hears_channels_lists_them_and_serving_does_not(store, small_fsdd):
    def trained(variants: int):
        out = main(["--task", "speech-classify", "--data", str(small_fsdd), "--epochs", "1",
                    "--hidden", "8", "--channel", str(variants), "--register", "false",
                    "--feature_cache", str(store / "cache")])
        return MlflowClient().get_run(out["run_id"])

    clean, run = trained(0), trained(2)
    assert run.data.metrics["val_loss"] != clean.data.metrics["val_loss"]  # it heard them
    assert "channel_1" not in mlflow.artifacts.load_dict(
        f"runs:/{clean.info.run_id}/data/files.json")["columns"]
    assert run.data.params["channel"] == "2"
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data/files.json")
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(r["channel_1"] and r["channel_2"] for r in train)
    assert all(r["channel_1"] == "" for r in rows if r["split"] != "train")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").unwrap_python_model()
    assert "channel" not in json.dumps(model.spec)  # nothing of it reaches serving
