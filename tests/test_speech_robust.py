"""Speech as users send it and as new voices sound: file formats, rates and channels,
silence around a recording, augmentation, bidirectional layers, calibration and the
"unknown" rule, generated non-speech, and leave-one-speaker-out cross-validation."""

import io
import re

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch
from mlflow import MlflowClient

from data_loaders import audio, nonspeech
from models import calibration
from models.networks import build_model, logits, pad, read_out, utterance_cmvn
from pipeline.main import main
from pipeline.tasks.speech.augment import Augment
from tests.conftest import FSDD

S = audio.FeatureSettings()
CLIP = FSDD / "7_lucas_3.wav"


def feats(samples: np.ndarray, s: audio.FeatureSettings = S) -> np.ndarray:
    cut, why = audio.trimmed(samples, s)
    assert why is None, why
    return audio.frames(cut, s)


def encoded(samples: np.ndarray, rate: int, fmt: str, subtype: str | None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, subtype, rate, channels", [
    ("WAV", "PCM_U8", 8000, 1), ("WAV", "PCM_16", 16000, 1), ("WAV", "PCM_24", 44100, 2),
    ("WAV", "FLOAT", 22050, 2), ("FLAC", "PCM_16", 48000, 1), ("OGG", "VORBIS", 16000, 2)])
def test_every_common_format_decodes_to_the_same_audio(fmt, subtype, rate, channels):
    import librosa

    original = audio.decode(CLIP, 8000)
    at_rate = librosa.resample(original, orig_sr=8000, target_sr=rate)
    samples = np.stack([at_rate] * channels, axis=1) if channels == 2 else at_rate
    got = audio.decode(encoded(samples, rate, fmt, subtype), 8000)
    n = min(len(got), len(original))
    assert abs(len(got) - len(original)) <= 2
    assert np.corrcoef(got[:n], original[:n])[0, 1] > 0.97, (fmt, subtype)


def test_padding_with_silence_changes_no_frame():
    for name in ("7_lucas_3", "0_george_0", "6_jackson_40"):
        samples = audio.decode(FSDD / f"{name}.wav", 8000)
        second = np.zeros(8000, np.float32)
        padded = np.concatenate([second, samples, second[:5000]])
        assert np.array_equal(feats(samples), feats(padded))


def test_trimming_cuts_quiet_ends_and_can_be_turned_off():
    samples = audio.decode(CLIP, 8000)
    hum = 1e-3 * np.sin(np.arange(4000) * 0.3).astype(np.float32)  # -60 dB, not zeros
    padded = np.concatenate([hum, samples, hum])
    assert abs(len(feats(padded)) - len(feats(samples))) <= 2
    keep = audio.FeatureSettings(trim_db=0)
    assert len(feats(padded, keep)) > len(feats(padded)) + 90


def test_what_trimming_leaves_is_checked_and_absurd_samples_are_refused():
    blip = np.zeros(16000, np.float32)
    blip[8000] = 0.9  # two seconds, but one sample of sound
    assert audio.trimmed(blip, S)[1].startswith("too short: 0 ms")
    assert audio.trimmed(np.zeros(8000, np.float32), S)[1].startswith("silent")
    loud = audio.decode(CLIP, 8000) * 1e25
    assert audio.trimmed(loud, S)[1].startswith("out of range: samples reach")


@pytest.mark.parametrize("value, why", [(np.nan, "samples contain NaN or infinity"),
                                        (np.inf, "samples contain NaN or infinity"),
                                        (1e30, "out of range: samples reach 1e+30")])
def test_a_float_file_holding_absurd_samples_is_named_not_undecodable(value, why):
    # librosa refuses NaN while resampling or mixing to mono: it was "cannot decode"
    samples = np.repeat(audio.decode(CLIP, 8000), 6)
    samples[100] = value
    buf = io.BytesIO()
    sf.write(buf, np.stack([samples, samples], 1), 48_000, format="WAV", subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="^audio bytes: " + re.escape(why)):
        audio.decode(buf.getvalue(), 8000)


def test_augmentation_is_seeded_and_stays_inside_each_utterance():
    aug = Augment(freq_warp=0.15, time_stretch=0.2, noise_snr=10, freq_masks=2, time_masks=2)
    x = torch.randn(3, 30, 40)
    lengths = torch.tensor([30, 12, 5])
    x[1, 12:] = 0
    x[2, 5:] = 0

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        y, n = aug.raw(x, lengths, g)
        return aug.masks(y, n, g), n

    (a, na), (b, nb), (c, _) = draw(0), draw(0), draw(1)
    assert torch.equal(a, b) and torch.equal(na, nb) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    assert ((na - lengths).abs() <= (0.2 * lengths).ceil() + 1).all()
    for i, n in enumerate(na.tolist()):  # nothing leaks past the (new) end
        assert (a[i, n:] == 0).all()
    assert not Augment()


def test_bidirectional_mean_readout_ignores_padding():
    torch.manual_seed(0)
    net = build_model({"cell": "gru", "hidden": 8, "layers": 2, "dropout": 0.0,
                       "norm": "layer", "init": "orthogonal", "bidirectional": True,
                       "readout": "mean"}, 5, 3)
    xs = [np.random.default_rng(i).standard_normal((n, 5)).astype("float32")
          for i, n in enumerate((7, 12, 3))]
    x, lengths = pad(xs)
    together = logits(net, x, lengths)
    wider = torch.cat([x, torch.zeros(3, 9, 5)], 1)
    alone = torch.cat([logits(net, *pad([xi])) for xi in xs])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(logits(net, wider, lengths), together, atol=1e-5)


ENSEMBLE = {"cell": "gru", "hidden": 8, "layers": 1, "dropout": 0.0, "norm": "none",
            "init": "orthogonal", "bidirectional": True, "readout": "mean",
            "ensemble": ["global", "utterance"]}


def test_an_ensemble_averages_its_networks_and_each_view_reads_as_it_says():
    """Padding changes nothing; the output is the members' mean; the utterance view
    gives the same for the same utterance louder or through another gain per band (a
    per-band affine change of the log-mel frames), while the global view does not."""
    torch.manual_seed(0)
    net = build_model(ENSEMBLE, 5, 3)
    xs = [np.random.default_rng(i).standard_normal((n, 5)).astype("float32")
          for i, n in enumerate((7, 12, 3))]
    x, lengths = pad(xs)
    together = logits(net, x, lengths)
    alone = torch.cat([logits(net, *pad([xi])) for xi in xs])
    assert torch.allclose(together, alone, atol=1e-5)
    each = net(x, lengths=lengths, each=True)[0]  # [B, T, C, members]
    assert each.shape == (3, 12, 3, 2)
    assert torch.allclose(net(x, lengths=lengths)[0], each.mean(-1))
    moved = pad([xi * np.linspace(0.5, 2, 5, dtype="float32") + 3 for xi in xs])[0]
    glob, utt = (m.pooled for m in net.members)
    assert torch.allclose(utt(utterance_cmvn(moved, lengths), lengths),
                          utt(utterance_cmvn(x, lengths), lengths), atol=1e-4)
    assert not torch.allclose(glob(moved, lengths), glob(x, lengths), atol=1e-2)


def test_each_network_of_an_ensemble_learns_from_its_own_loss():
    """The training loss (cross-entropy over the stacked outputs) gives each member the
    gradient of its own loss, halved: no member's step depends on another's output."""
    torch.manual_seed(0)
    net = build_model({**ENSEMBLE, "readout": "last"}, 5, 3)
    x, lengths = pad([np.random.default_rng(i).standard_normal((n, 5)).astype("float32")
                      for i, n in enumerate((7, 12, 3, 9))])
    y = torch.tensor([0, 2, 1, 2])
    out = read_out(net(x, lengths=lengths, each=True)[0], lengths, "last")  # [B, C, 2]
    torch.nn.functional.cross_entropy(out, y[:, None].repeat(1, 2)).backward()
    joint = [p.grad.clone() for p in net.members[0].parameters()]
    net.zero_grad()
    alone = read_out(net.members[0](x, lengths=lengths)[0], lengths, "last")
    (torch.nn.functional.cross_entropy(alone, y) / 2).backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6)
               for a, p in zip(joint, net.members[0].parameters(), strict=True))


@pytest.mark.parametrize("given, message", [
    ({"ensemble": "global,spectral"}, "ensemble: each view must be one of"),
    ({"ensemble": "global"}, "ensemble: give 2 to 4 views"),
    ({"ensemble": "global,utterance", "normalise": "utterance"}, "it needs normalise=global"),
    ({"ensemble": "global,utterance", "pretrain_epochs": 2}, "give one of them")])
def test_ensemble_settings_that_cannot_work_are_named(given, message):
    from pipeline.tasks.speech.classify import Params

    with pytest.raises(ValueError, match=message):
        Params(**given).validate()


def test_label_smoothing_reaches_the_training_loss_and_is_bounded():
    from pipeline.tasks.speech.classify import Params

    out, y = torch.tensor([[4.0, 0.0, -1.0], [0.0, 3.0, 0.0]]), torch.tensor([0, 1])
    plain = torch.nn.functional.cross_entropy(out, y)
    assert torch.isclose(Params().validate().loss()(out, y), plain)
    smoothed = Params(label_smoothing=0.2).validate().loss()(out, y)
    assert torch.isclose(smoothed, torch.nn.functional.cross_entropy(out, y,
                                                                     label_smoothing=0.2))
    assert smoothed > plain  # sure, right outputs pay for leaving nothing to the others
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\), got 0.5"):
        Params(label_smoothing=0.5).validate()


def test_temperature_undoes_overconfidence_and_lowers_the_calibration_error():
    rng = np.random.default_rng(0)
    true_logits = torch.as_tensor(rng.standard_normal((4000, 5)) * 1.5)
    y = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=torch.Generator()
                          .manual_seed(0))[:, 0]
    over = true_logits * 4  # what an overfit network says
    t = calibration.fit_temperature(over.float(), y)
    assert 3.3 < t < 4.7
    ece_before = calibration.expected_calibration_error(torch.softmax(over, 1).numpy(),
                                                        y.numpy())
    ece_after = calibration.expected_calibration_error(torch.softmax(over / t, 1).numpy(),
                                                       y.numpy())
    assert ece_after < 0.03 < ece_before


@pytest.mark.parametrize("scale, wrong", [(1, 0.0), (10, 0.0), (10, 0.1), (100, 0.05),
                                          (1, 0.9)])
def test_the_temperature_is_the_best_on_a_grid_also_for_sharp_logits(scale, wrong):
    """Sharp, nearly separable validation logits (a network that fits its validation
    set) are where LBFGS stalled at T = 1 or stepped to NaN."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 11, (300,), generator=gen)
    z = torch.randn(300, 11, generator=gen) * scale / 10
    z[torch.arange(300), y] += scale
    flip = torch.rand(300, generator=gen) < wrong
    y[flip] = (y[flip] + 1) % 11
    t = calibration.fit_temperature(z, y)

    def nll(temp):
        return float(torch.nn.functional.cross_entropy(z.double() / temp, y))

    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
    assert 0.05 <= t <= 20 and nll(t) <= min(nll(g) for g in grid) + 1e-6


def test_non_finite_validation_outputs_are_refused_not_fitted():
    with pytest.raises(ValueError, match="not finite"):
        calibration.fit_temperature(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))


def test_unknown_rule_rejects_the_unknown_output_and_unsure_inputs_at_the_asked_rate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 1000)
    logit = torch.as_tensor(np.eye(4)[y] * 4 + rng.standard_normal((1000, 4)),
                            dtype=torch.float32)
    rule = calibration.fit_rule(logit, torch.as_tensor(y), 3, rate=0.05,
                                extra=(calibration.NOT_SPEECH,))
    probs, why = calibration.apply_rule(logit, rule, 3)
    assert probs.shape == (1000, 3) and (probs.sum(1) <= 1 + 1e-12).all()
    assert 0.03 <= np.mean([w == calibration.LOW_CONFIDENCE for w in why]) <= 0.07
    noise = torch.tensor([[0.0, 0.0, 0.0, 9.0]])  # the unknown output on top
    assert calibration.apply_rule(noise, rule, 3)[1] == [calibration.NOT_SPEECH]
    assert calibration.apply_rule(torch.zeros(1, 4), rule, 3)[1] == [calibration.LOW_CONFIDENCE]
    never = calibration.fit_rule(logit[:, :3], torch.as_tensor(y), 3, rate=0.0)
    assert not never["unknown_outputs"]
    assert calibration.apply_rule(torch.zeros(1, 3), never, 3)[1] == [""]
    words = calibration.fit_rule(torch.cat([logit, torch.zeros(1000, 1)], 1),
                                 torch.as_tensor(y), 3, 0.0,
                                 (calibration.NOT_SPEECH, calibration.NOT_A_WORD))
    for at, reason in ((3, calibration.NOT_SPEECH), (4, calibration.NOT_A_WORD)):
        top = torch.zeros(1, 5).index_fill_(1, torch.tensor([at]), 9.0)
        assert calibration.apply_rule(top, words, 3)[1] == [reason]
    old = {"temperature": 1.0, "unknown_output": True, "min_probability": 0.0}  # saved before
    assert calibration.apply_rule(noise, old, 3)[1] == [calibration.NOT_SPEECH]
    with pytest.raises(ValueError, match="5 outputs, expected 3 classes and 1 unknown"):
        calibration.fit_rule(torch.zeros(2, 5), torch.tensor([0, 1]), 3, 0.0,
                             (calibration.NOT_SPEECH,))


def test_the_word_output_is_shifted_to_pass_the_asked_share_of_validation_words():
    rng = np.random.default_rng(2)
    extra = (calibration.NOT_SPEECH, calibration.NOT_A_WORD)
    rule = {"temperature": 2.0, "unknown_outputs": list(extra), "min_probability": 0.0}
    said = torch.as_tensor(rng.standard_normal((400, 5)))  # words: 3 classes, 2 unknowns
    said[:40, 3] = 9.0  # heard as non-speech: rejected whatever the shift
    for rate in (0.02, 0.1, 0.3):
        rule["word_bias"] = calibration.word_bias(said, rule, 3, rate)
        why = calibration.apply_rule(said, rule, 3)[1]
        called = np.mean([not w for w in why])
        assert rate - 1 / 400 <= called <= rate  # as many as allowed, not one more
        assert why[:40] == [calibration.NOT_SPEECH] * 40
    strong = said.clone()
    strong[40:, 4] += 20  # a network sure of every word: the shift gives some back
    assert calibration.word_bias(strong, rule, 3, 0.1) < 0
    nudged = {**rule, "word_bias": -100.0}
    assert "" in calibration.apply_rule(strong, nudged, 3)[1]
    heard = said.clone()
    heard[:, 3] = 99.0  # every word heard as non-speech: the word output need never win
    rule["word_bias"] = calibration.word_bias(heard, rule, 3, 0.05)
    assert calibration.apply_rule(heard, rule, 3)[1] == [calibration.NOT_SPEECH] * 400
    heard[:10, 3] = -99.0  # ten can pass, fewer than 5 %: all ten may
    rule["word_bias"] = calibration.word_bias(heard, rule, 3, 0.05)
    assert calibration.apply_rule(heard, rule, 3)[1][:10] == [""] * 10


def test_generated_nonspeech_is_seeded_and_covers_every_kind():
    a, b = nonspeech.signals(8000, seed=3, n=2), nonspeech.signals(8000, seed=3, n=2)
    assert list(a) == list(nonspeech.KINDS)
    for kind in nonspeech.KINDS:
        assert len(a[kind]) == 2
        for x, z in zip(a[kind], b[kind], strict=True):
            assert np.array_equal(x, z) and np.isfinite(x).all() and 0.3 * 8000 <= len(x)
            assert np.abs(x).max() <= (0.9 if kind != "silence" else 1e-2)


def test_leave_one_speaker_out_runs_a_child_per_speaker(store, small_fsdd):
    out = main(["--task", "speech-classify", "--data", str(small_fsdd), "--split", "speaker",
                "--epochs", "1", "--hidden", "8", "--feature_cache", str(store / "cache"),
                "--checkpoint_dir", str(store / "ckpt")])
    client = MlflowClient()
    parent = client.get_run(out["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    held = sorted(c.data.params["test_speaker"] for c in children)
    assert held == ["george", "jackson", "lucas", "nicolas"]
    assert parent.data.params["split"] == "speaker" and parent.data.params["test_speaker"] == ""
    accuracy = [c.data.metrics["test_accuracy"] for c in children]
    assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(np.mean(accuracy))
    assert parent.data.metrics["test_accuracy_std"] == pytest.approx(np.std(accuracy))
    assert "test_macro_f1_mean" in parent.data.tags["test_metrics"].split(",")
    for c in children:  # each fold tests on its speaker alone, and trains without it
        table = mlflow.load_table("data/files.json", run_ids=[c.info.run_id])
        test = table[table["split"] == "test"]
        assert set(test["speaker"]) == {c.data.params["test_speaker"]}
        assert c.data.params["test_speaker"] not in set(table[table["split"] != "test"]
                                                         ["speaker"])
    assert not client.search_registered_models()  # folds are not registered


def test_one_fold_alone_and_the_train_step_need_a_speaker(store, small_fsdd):
    from pipeline.train import main as train

    with pytest.raises(audio.AudioError, match="give test_speaker"):
        train(["--task", "speech-classify", "--data", str(small_fsdd), "--split", "speaker",
               "--feature_cache", ""])
    with pytest.raises(audio.AudioError, match="'ann' is not one of the speakers"):
        main(["--task", "speech-classify", "--data", str(small_fsdd), "--split", "speaker",
              "--test_speaker", "ann", "--feature_cache", ""])
