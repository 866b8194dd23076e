"""Words outside the vocabulary (speech-classify's `unknown_words`): the word lists keep
the digits and their sound-alikes out, voices say them from the seed, and a run trains
them as an unknown output of their own and measures words and voices it never heard."""

import mlflow
import pytest
from mlflow import MlflowClient

from data_loaders import synthetic, words
from models.calibration import NOT_A_WORD, NOT_SPEECH
from pipeline.main import main
from pipeline.tasks.speech.classify import (
    FRESH_VOICES,
    HELD_OUT_VOICES,
    LIMITS,
    VALIDATION_VOICES,
)


def test_the_word_lists_hold_no_digit_nor_its_sound_alike_and_are_disjoint():
    banned = (set(synthetic.DIGITS) | {w for ws in words.HOMOPHONES.values() for w in ws}
              | set(words.NEAR_RHYMES))
    lists = (words.TRAINING, words.VALIDATION, words.HELD_OUT, words.FRESH)
    for listed in lists:
        assert not banned & set(listed) and len(set(listed)) == len(listed)
        assert all(w.isalpha() and w.islower() for w in listed)  # file names {word}_synthK_0
    assert all(not set(a) & set(b) for i, a in enumerate(lists) for b in lists[i + 1:])
    assert set(words.HOMOPHONES) <= set(synthetic.DIGITS)
    voices = (HELD_OUT_VOICES, VALIDATION_VOICES, FRESH_VOICES)
    assert all(v.start >= LIMITS["synthetic_voices"] for v in voices)  # no run trains on them
    assert all(not set(a) & set(b) for i, a in enumerate(voices) for b in voices[i + 1:])


def test_voices_say_words_drawn_from_the_seed(tmp_path):
    said = synthetic.say_words(words.TRAINING, range(3), 2, tmp_path, seed=0, progress=False)
    again = synthetic.say_words(words.TRAINING, range(3), 2, tmp_path, seed=0, progress=False)
    other = synthetic.say_words(words.TRAINING, range(3), 2, tmp_path, seed=1, progress=False)
    assert said == again and len(said) == 6 and all(p.stat().st_size > 1000 for p in said)
    assert {p.stem.split("_")[0] for p in said} <= set(words.TRAINING)
    assert [p.stem for p in said] != [p.stem for p in other]


@pytest.mark.slow
def test_words_train_an_unknown_output_of_their_own_and_are_measured(store, small_fsdd):
    out = main(["--task", "speech-classify", "--data", str(small_fsdd), "--epochs", "1",
                "--hidden", "8", "--synthetic_voices", "4", "--unknown_words", "3",
                "--nonspeech", "2", "--synthetic_cache", str(store / "synthetic"),
                "--feature_cache", str(store / "cache")])
    run = MlflowClient().get_run(out["run_id"])
    assert 0 <= run.data.metrics["test_word_false_accept"] <= 1
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data/files.json")
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    said = [r for r in rows if r["label"] == "unknown" and "synth" in str(r["speaker"])]
    assert len(said) == 12 and {r["split"] for r in said} == {"train"}
    model = mlflow.pyfunc.load_model("models:/speech-classify@champion").unwrap_python_model()
    assert model.spec["n_out"] == 3 + 2
    assert model.spec["unknown"]["unknown_outputs"] == [NOT_SPEECH, NOT_A_WORD]
    bias = model.spec["unknown"]["word_bias"]  # set on the validation words
    assert bias != 0 and run.data.params["word_bias"] == f"{bias:.4g}"


def test_words_need_the_voices_that_say_them(store, small_fsdd):
    with pytest.raises(ValueError, match="unknown_words: the synthetic voices say the words"):
        main(["--task", "speech-classify", "--data", str(small_fsdd), "--unknown_words", "2"])


@pytest.mark.slow
def test_word_rates_gives_what_each_fold_logged_at_its_own_rate(store, small_fsdd):
    """The operating-point table refits the shift on each fold's model; at the rate the
    folds trained with it gives back their logged metrics, and a lower rate passes no
    more words (held-out or fresh) and calls no fewer digits unknown."""
    from pipeline.tasks.speech import word_rates

    out = main(["--task", "speech-classify", "--data", str(small_fsdd), "--split", "speaker",
                "--epochs", "6", "--lr", "0.01", "--hidden", "16", "--synthetic_voices", "4",
                "--unknown_words", "3", "--word_accept_rate", "0.2",
                "--synthetic_cache", str(store / "synthetic"),
                "--feature_cache", str(store / "cache")])
    table = word_rates.main(["--run", out["run_id"], "--rates", "0.2,0.05"])
    assert len(table) == 4  # small_fsdd's four speakers
    for run_id, (own, lower) in table.items():
        m = MlflowClient().get_run(run_id).data.metrics
        assert (own.words, own.unknown, own.right) == pytest.approx(
            (m["test_word_false_accept"], m["test_unknown_share"],
             m["test_accuracy_with_unknown"]), abs=1e-9)
        assert lower.words <= own.words and lower.fresh_words <= own.fresh_words
        assert lower.unknown >= own.unknown


@pytest.mark.parametrize("argv, message", [
    (["--rates", "abc"], "--rates: numbers separated by commas"),
    (["--rates", "0.7"], r"--rates: each must be in \[0, 0.5\)"),
    (["--run", "nothing"], "--run: no run 'nothing'"),
    (["--run", "FOLDLESS"], "has no fold runs"),
    (["--run", "WORDLESS"], "trained without unknown_words"),
])
def test_word_rates_refuses_what_it_cannot_measure_before_loading_a_model(store, argv, message):
    from pipeline.tasks.speech import word_rates

    client = MlflowClient()
    exp = client.create_experiment("speech-classify")
    foldless, wordless = (client.create_run(exp).info.run_id for _ in range(2))
    fold = client.create_run(exp, tags={"mlflow.parentRunId": wordless})
    client.log_param(fold.info.run_id, "unknown_words", "0")
    ids = {"FOLDLESS": foldless, "WORDLESS": wordless}
    argv = ["--run", foldless, *[ids.get(a, a) for a in argv]]
    with pytest.raises(ValueError, match=message):
        word_rates.main(argv)
