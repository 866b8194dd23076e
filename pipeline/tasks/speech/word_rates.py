"""How the "not a word" operating point trades words for digits, fold by fold of a
leave-one-speaker-out run of speech-classify with unknown_words: for each
`word_accept_rate` asked, the shift `word_bias` refit on the validation words as
training fits it, then the share of the held-out words (200 clips, words and voices
never trained on) that come back as a digit, the same for 200 clips of words.FRESH
(words and voices no run reads, so that a rate chosen from the held-out words' figures
can be checked on words that chose nothing), and the share of the held-out speaker's
digits that come back "unknown". The rate is applied after training, so this gives what
a cross-validation with that rate would give, from the fold models; it trains nothing.

    python -m pipeline.tasks.speech.word_rates --run PARENT_RUN_ID --rates 0.05,0.03
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np


def served(run_id: str):
    import mlflow

    return mlflow.pyfunc.load_model(f"runs:/{run_id}/model").unwrap_python_model()


def run_path(run, value: str) -> Path:
    """A path param of a logged run: relative ones from the folder it ran in (the
    `workdir` tag that pipeline/core/tracking.py sets)."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(run.data.tags.get("workdir", ".")) / p


def file_logits(model, paths) -> object:
    """The served model's network outputs for audio files, read as a request is."""
    import pandas as pd

    from models.networks import logits_of

    raw = []
    for i in range(0, len(paths), model.max_rows):
        part = pd.DataFrame({"audio": [p.read_bytes() for p in paths[i:i + model.max_rows]]})
        raw += model.batch(part, lenient=True)[0]
    if bad := [p for p, r in zip(paths, raw, strict=True) if isinstance(r, str)]:
        raise ValueError(f"{bad[0]}: no speech the network can read")
    return logits_of(model.net, [model.normalise(r) for r in raw])


class Rates(NamedTuple):
    """What one word_accept_rate gives on one fold."""
    rate: float
    words: float  # held-out words called a digit
    fresh_words: float  # words.FRESH called a digit
    unknown: float  # the held-out speaker's digits called unknown
    right: float  # its digits right, unknown counted wrong

    def described(self) -> str:
        return (f"held-out words called a digit {self.words:.4f} (fresh words "
                f"{self.fresh_words:.4f}), digits called unknown {self.unknown:.4f}, "
                f"digits right with unknown counted wrong {self.right:.4f}")


def fold_rates(run, rates: list[float]) -> list[Rates]:
    """What each rate gives on one fold."""
    from data_loaders import audio, synthetic, words
    from models.calibration import apply_rule, word_bias
    from pipeline.tasks.speech.classify import FRESH_VOICES, HELD_OUT_VOICES, VALIDATION_VOICES
    from pipeline.tasks.speech.common import SAMPLE

    params = run.data.params
    model, cache = served(run.info.run_id), run_path(run, params["synthetic_cache"])
    said = {name: file_logits(model, synthetic.say_words(listed, voices, 25, cache))
            for name, listed, voices in (("val", words.VALIDATION, VALIDATION_VOICES),
                                         ("test", words.HELD_OUT, HELD_OUT_VOICES),
                                         ("fresh", words.FRESH, FRESH_VOICES))}
    folder = run_path(run, params["data"]) if params.get("data") else SAMPLE
    utts = [u for u in audio.discover(folder) if u.speaker == params["test_speaker"]]
    digits = file_logits(model, [u.path for u in utts])
    true = np.array([model.spec["classes"].index(u.label) for u in utts])
    rule, n = dict(model.spec["unknown"]), len(model.spec["classes"])
    out = []
    for rate in rates:
        rule["word_bias"] = word_bias(said["val"], rule, n, rate) if rate else 0.0
        probs, why = apply_rule(digits, rule, n)
        unknown = np.array([w != "" for w in why])
        right = np.mean((probs.argmax(1) == true) & ~unknown)
        out.append(Rates(rate, passed(said["test"], rule, n), passed(said["fresh"], rule, n),
                         float(unknown.mean()), float(right)))
    return out


def passed(said, rule: dict, n: int) -> float:
    """The share of word clips (their logits) that come back as a digit."""
    from models.calibration import apply_rule

    return float(np.mean([w == "" for w in apply_rule(said, rule, n)[1]]))


def main(argv=None) -> dict[str, list[Rates]]:
    """Prints the table; returns each fold run's rows, by run id."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    parser = argparse.ArgumentParser(prog="python -m pipeline.tasks.speech.word_rates",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the cross-validation's parent run id")
    parser.add_argument("--rates", default="0.05,0.04,0.03,0.02",
                        help="word_accept_rate values, comma-separated")
    args = parser.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        raise ValueError(f"--rates: numbers separated by commas, got {args.rates!r}") from None
    if not all(0 <= r < 0.5 for r in rates):
        raise ValueError(f"--rates: each must be in [0, 0.5), got {args.rates!r}")
    try:  # MLFLOW_TRACKING_URI, else MLflow's default: mlflow.db here, as for the steps
        parent = MlflowClient().get_run(args.run)
    except MlflowException:
        raise ValueError(f"--run: no run {args.run!r} in {mlflow.get_tracking_uri()}") from None
    folds = MlflowClient().search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{args.run}'",
        order_by=["attributes.run_name"])
    if not folds:
        raise ValueError(f"--run: run {args.run} has no fold runs; give the parent run of a "
                         "leave-one-speaker-out cross-validation")
    if folds[0].data.params.get("unknown_words", "0") == "0":  # before any model loads
        raise ValueError(f"--run: run {args.run} trained without unknown_words: its models "
                         "have no \"not a word\" output")
    table = {}
    for run in folds:
        table[run.info.run_id] = fold_rates(run, rates)
        for row in table[run.info.run_id]:
            print(f"{run.info.run_name}: rate {row.rate:g}: {row.described()}", flush=True)
    for k, rate in enumerate(rates):
        mean = Rates(*np.array([rows[k] for rows in table.values()]).mean(0))
        print(f"word_accept_rate {rate:g}, mean of {len(folds)} folds: {mean.described()}")
    return table


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # a bad --run or --rates: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
