"""The audio loader on the bundled FSDD subset: layouts, features, cache, bad files, splits."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_loaders import audio
from data_loaders.audio import AudioError, FeatureSettings

FSDD = Path(__file__).resolve().parents[1] / "data" / "fsdd" / "recordings"
S = FeatureSettings()


def test_discovers_fsdd_names():
    utts = audio.discover(FSDD)
    assert len(utts) == 3000
    assert {u.label for u in utts} == {str(d) for d in range(10)}
    assert {u.speaker for u in utts} == {"george", "jackson", "lucas", "nicolas", "theo",
                                         "yweweler"}
    assert {u.index for u in utts} == set(range(50))
    u = next(u for u in utts if u.path.name == "7_lucas_12.wav")
    assert (u.label, u.speaker, u.index) == ("7", "lucas", 12)


def test_discovers_one_folder_per_label(tmp_path):
    for label, src in (("yes", "1_george_0.wav"), ("no", "2_jackson_3.wav")):
        (tmp_path / label).mkdir()
        shutil.copy(FSDD / src, tmp_path / label / f"spk{label}_nohash_4.wav")
    shutil.copy(FSDD / "3_lucas_1.wav", tmp_path / "no" / "plain.wav")
    utts = {u.path.name: u for u in audio.discover(tmp_path)}
    assert (utts["spkyes_nohash_4.wav"].label, utts["spkyes_nohash_4.wav"].speaker) == \
        ("yes", "spkyes")
    assert utts["plain.wav"].label == "no" and utts["plain.wav"].speaker is None


def test_a_file_without_a_label_is_named(tmp_path):
    shutil.copy(FSDD / "1_george_0.wav", tmp_path / "recording.wav")
    with pytest.raises(AudioError, match=r"recording.wav: cannot tell its label"):
        audio.discover(tmp_path)


def test_log_mel_frames_follow_window_and_hop():
    samples = audio.decode(FSDD / "5_nicolas_7.wav", 8000)
    x = audio.frames(samples, S)
    assert x.dtype == np.float32 and x.shape == (1 + len(samples) // 80, 40)  # hop 10 ms at 8 kHz
    assert np.isfinite(x).all()
    m = audio.frames(samples, FeatureSettings(features="mfcc", hop_ms=20))
    assert m.shape == (1 + len(samples) // 160, 39)  # 13 MFCC + deltas + delta-deltas


def test_resamples_to_the_configured_rate():
    at8 = audio.decode(FSDD / "0_george_0.wav", 8000)
    at16 = audio.decode(FSDD / "0_george_0.wav", 16000)
    assert abs(len(at16) - 2 * len(at8)) <= 2


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_flac_and_ogg(tmp_path, fmt):
    samples, rate = sf.read(FSDD / "4_jackson_9.wav", dtype="float32")
    path = tmp_path / f"4_jackson_9.{fmt.lower()}"
    sf.write(path, samples, rate, format=fmt)
    got = audio.decode(path, 8000)
    assert abs(len(got) - len(samples)) <= 1024  # OGG pads to whole pages
    if fmt == "FLAC":  # lossless
        assert np.allclose(got, samples, atol=1e-4)


def _bad_files(folder: Path) -> dict[str, str]:
    (folder / "0_a_0.wav").write_bytes(b"")
    (folder / "1_a_0.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    sf.write(folder / "2_a_0.wav", np.zeros(4000, np.float32), 8000)
    sf.write(folder / "3_a_0.wav", 0.5 * np.ones(160, np.float32), 8000)  # 20 ms
    shutil.copy(FSDD / "4_george_1.wav", folder / "4_a_0.wav")
    whole = (FSDD / "5_george_1.wav").read_bytes()
    (folder / "5_a_0.wav").write_bytes(whole[:len(whole) // 2])  # a copy that stopped
    return {"0_a_0.wav": "empty", "1_a_0.wav": "cannot decode", "2_a_0.wav": "silent",
            "3_a_0.wav": "too short: 20 ms", "5_a_0.wav": "truncated: the header says"}


def test_bad_files_stop_the_run_with_their_list(tmp_path):
    expected = _bad_files(tmp_path)
    with pytest.raises(AudioError) as err:
        audio.load_features(audio.discover(tmp_path), S, None, progress=False)
    msg = str(err.value)
    assert "5 bad audio file(s)" in msg and "skip_bad=true" in msg
    for name, why in expected.items():
        line = next(ln for ln in msg.splitlines() if name in ln)
        assert why in line, line


def test_bad_files_skipped_only_on_request_and_returned(tmp_path):
    expected = _bad_files(tmp_path)
    feats, kept, bad = audio.load_features(audio.discover(tmp_path), S, None, skip_bad=True,
                                           progress=False)
    assert [u.path.name for u in kept] == ["4_a_0.wav"] and len(feats) == 1
    assert sorted(Path(p).name for p, _ in bad) == sorted(expected)


def test_cache_skips_extraction_and_settings_invalidate_it(tmp_path, monkeypatch):
    utts = audio.discover(FSDD)[:12]
    first, _, _ = audio.load_features(utts, S, tmp_path, progress=False)
    assert len(list((tmp_path / S.key()).glob("*.npy"))) == 12

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(audio, "decode", no_decoding)
    again, _, _ = audio.load_features(utts, S, tmp_path, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(AssertionError, match="decoded although cached"):
        audio.load_features(utts, FeatureSettings(n_mels=32), tmp_path, progress=False)


def test_cache_is_keyed_by_content(tmp_path):
    shutil.copy(FSDD / "1_george_0.wav", tmp_path / "1_x_0.wav")
    cache = tmp_path / "cache"
    audio.load_features(audio.discover(tmp_path), S, cache, progress=False)
    shutil.copy(FSDD / "2_george_0.wav", tmp_path / "1_x_0.wav")  # same name, new content
    feats, _, _ = audio.load_features(audio.discover(tmp_path), S, cache, progress=False)
    expected = audio.frames(audio.trimmed(audio.decode(FSDD / "2_george_0.wav", 8000), S)[0], S)
    assert np.array_equal(feats[0], expected)
    assert len(list(cache.rglob("*.npy"))) == 2


def test_index_split_is_fsdds_own():
    utts = audio.discover(FSDD)
    split = audio.split_utterances(utts, "index", val_frac=0.1)
    idx = np.array([u.index for u in utts])
    assert (split[idx < 5] == 2).all() and not (split[idx >= 5] == 2).any()
    assert (split == 1).sum() == round(0.1 * (idx >= 5).sum())


def test_speaker_split_holds_out_one_speaker_whole():
    utts = audio.discover(FSDD)
    split = audio.split_utterances(utts, "speaker", val_frac=0.1, seed=3,
                                   test_speaker="lucas")
    speaker = np.array([u.speaker for u in utts])
    assert (split[speaker == "lucas"] == 2).all() and not (split[speaker != "lucas"] == 2).any()
    assert (split == 1).sum() == round(0.1 * (speaker != "lucas").sum())
    with pytest.raises(audio.AudioError, match="'ann' is not one of the speakers"):
        audio.split_utterances(utts, "speaker", test_speaker="ann")


def test_random_split_is_seeded():
    utts = audio.discover(FSDD)
    a = audio.split_utterances(utts, "random", seed=1)
    assert np.array_equal(a, audio.split_utterances(utts, "random", seed=1))
    assert not np.array_equal(a, audio.split_utterances(utts, "random", seed=2))
    assert (a == 2).sum() == 600


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="features must be one of"):
        FeatureSettings(features="spectrum").validate()
    with pytest.raises(ValueError, match="hop_ms .* must not exceed win_ms"):
        FeatureSettings(hop_ms=30, win_ms=25).validate()
    for rate in (100, 3999, 384_001, 10 ** 9):
        with pytest.raises(ValueError, match=f"sample_rate must be 4000 to 384000 Hz .* {rate}"):
            FeatureSettings(sample_rate=rate).validate()
    for many in ({"win_ms": 1e6}, {"n_mels": 100_000}):  # before librosa's filters: no GBs
        with pytest.raises(ValueError, match="win_ms must be at most 1000 and n_mels at most "
                                             "256, got "):
            FeatureSettings(**many).validate()
    for win_ms, hop_ms in ((0.05, 0.05), (25, 0.05)):  # 0 samples: librosa divides by it
        with pytest.raises(ValueError, match="win_ms and hop_ms must each span at least one "
                                             f"sample at 8000 Hz, got {win_ms} and {hop_ms}"):
            FeatureSettings(win_ms=win_ms, hop_ms=hop_ms).validate()
    with pytest.raises(ValueError, match="n_mels: 16 of the 150 mel bands get no FFT bin of a "
                                         "25 ms window at 8000 Hz"):
        FeatureSettings(n_mels=150).validate()
    for rate, n_mels in ((4000, 40), (8000, 80), (48000, 128)):  # librosa warns of none
        FeatureSettings(sample_rate=rate, n_mels=n_mels).validate()


def test_utterance_cmvn():
    x = np.random.default_rng(0).normal(3, 2, (50, 4)).astype(np.float32)
    z = audio.utterance_cmvn(x)
    assert np.allclose(z.mean(0), 0, atol=1e-5) and np.allclose(z.std(0), 1, atol=1e-4)


@pytest.mark.parametrize("size", [0x7FFFFFFF, 0xFFFFFFFF])
def test_a_wav_written_as_a_stream_is_not_called_truncated(size):
    """Writers that stream a WAV declare a size they cannot know yet; only a size the
    file falls short of is a cut."""
    whole = bytearray((FSDD / "3_george_1.wav").read_bytes())
    at = whole.find(b"data") + 4
    whole[at:at + 4] = size.to_bytes(4, "little")
    assert np.array_equal(audio.decode(bytes(whole), 8000), audio.decode(FSDD / "3_george_1.wav",
                                                                         8000))
    assert audio.probe(bytes(whole))[1:] == (8000, 1)


def test_a_cut_file_is_refused_even_where_its_features_were_cached(tmp_path):
    """Features cached before files were checked for a cut must not let one through."""
    whole = (FSDD / "5_george_1.wav").read_bytes()
    cut = tmp_path / "data" / "5_a_0.wav"
    cut.parent.mkdir()
    cut.write_bytes(whole[:len(whole) // 2])
    cache = tmp_path / "cache"
    audio.FeatureCache(cache, S).put(hashlib.sha256(cut.read_bytes()).hexdigest(),
                                     np.zeros((5, S.n_mels), np.float32))
    feats, kept, bad = audio.load_features(audio.discover(cut.parent), S, cache,
                                           skip_bad=True, progress=False)
    assert feats == kept == [] and bad[0][1].startswith("truncated: the header says")


def test_predict_reads_audio_files_it_can_and_names_those_it_cannot(tmp_path):
    from pipeline import tasks

    shutil.copy(FSDD / "3_george_1.wav", tmp_path / "a.wav")
    (tmp_path / "in.wav").mkdir()  # a folder named like a file: its files are read
    shutil.copy(FSDD / "4_george_1.wav", tmp_path / "in.wav" / "b.wav")
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    speech = tasks.load("speech-classify")
    with pytest.raises(ValueError, match=r"^input gone.wav: cannot read it \(No such file"):
        speech.requests(tmp_path, {}, "none")
    frame, bad = speech.requests(tmp_path, {}, "none", skip_bad=True)
    assert frame.utterance_id.tolist() == ["a.wav", "in.wav/b.wav"]
    assert bad == [("gone.wav", "cannot read it (No such file or directory)")]
