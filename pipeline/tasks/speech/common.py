"""What the speech tasks share: audio files -> log-mel (or MFCC) frames, labels and
splits from the file layout, normalisation, the memory horizon, the served model's
input, reading audio for `predict`, and forecasting frames (speech-forecast's
objective, by which speech-classify pretrains).

Data: a folder of WAV/FLAC/OGG files, named as in the Free Spoken Digit Dataset
(`{label}_{speaker}_{index}.wav`) or one folder per label; empty `data` is the
bundled FSDD subset. Features are cached under `feature_cache`. Splits: `index`
(FSDD's own: take index below `test_index` is test), `random`, or `speaker`.
The tasks: classify.py (utterance -> label), forecast.py (the frame
`shift` steps ahead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from data_loaders.audio import AUDIO_SUFFIXES, SPLITS, FeatureSettings, Utterance
from data_loaders.sequences import SPLIT_NAMES, TEST, TRAIN, VAL
from pipeline.core.params import ROOT, Config, param
from pipeline.tasks import Task

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

SAMPLE = ROOT / "data" / "fsdd" / "recordings"
SHIFT = 3  # frames ahead: 30 ms at the default hop, past the frames' own overlap


@dataclass
class Params(FeatureSettings):
    """The feature settings (data_loaders.audio) and how utterances are split and kept."""

    split: str = param("index", "index (take < test_index is test, FSDD's own split), random, "
                                "or speaker (test_speaker's files are test)", SPLITS)
    test_index: int = param(5, "split=index: takes below this are test")
    test_speaker: str = param("", "split=speaker: the speaker held out for test; empty: each "
                                  "speaker in turn (leave-one-speaker-out cross-validation, a "
                                  "child run per speaker)")
    skip_bad: bool = param(False, "leave bad audio files out (counted and listed in the run) "
                                  "instead of stopping")
    feature_cache: str = param("data/cache/features", "feature cache folder, keyed by file "
                                                      "content and settings; empty: none")
    normalise: str = param("global", "global (mean and std of the training frames) or "
                                     "utterance (per utterance)", ("global", "utterance"))


@dataclass
class SpeechData:
    utts: list[Utterance]
    raw: list[np.ndarray]  # frames [T_i, F] per utterance, as extracted
    x: list[np.ndarray]  # the same, normalised
    y: np.ndarray  # class index per utterance
    split: np.ndarray  # TRAIN, VAL or TEST per utterance
    classes: list[str]
    norm: object | None  # the global Normaliser (None: per-utterance)
    bad: list[tuple[str, str]]  # skipped files and why
    # speech-classify's channel augmentation: raw frames [variant][training utterance]
    # and each chain in words (the training split's order)
    channels: list[list[np.ndarray]] = field(default_factory=list)
    chains: list[list[str]] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"path": [str(u.path) for u in self.utts],
                             "label": [u.label for u in self.utts],
                             "speaker": [u.speaker for u in self.utts],
                             "index": [u.index for u in self.utts],
                             "frames": [len(x) for x in self.x],
                             "split": [SPLIT_NAMES[s] for s in self.split],
                             **{f"channel_{k + 1}": self._on_train(words)
                                for k, words in enumerate(self.chains)}})

    def _on_train(self, values: list[str]) -> list[str]:
        """A value per training utterance spread over all utterances ("" elsewhere)."""
        out = [""] * len(self.utts)
        for i, v in zip(np.flatnonzero(self.split == TRAIN), values, strict=True):
            out[i] = v
        return out

    def summary(self) -> str:
        counts = ", ".join(f"{name} {int((self.split == s).sum())}"
                           for s, name in SPLIT_NAMES.items())
        return (f"{len(self.utts)} utterances, {len(self.classes)} classes ({counts}); "
                f"{len(self.bad)} bad files skipped")

    def padded(self, which: int, raw: bool = False):
        """Zero-padded frames x [N, T, F] (normalised unless `raw`), lengths [N] and class
        indices [N] of a split."""
        import torch

        from models.networks import pad

        idx = np.flatnonzero(self.split == which)
        x, lengths = pad([(self.raw if raw else self.x)[i] for i in idx])
        return x, lengths, torch.as_tensor(self.y[idx])

    def heard(self, x, lengths):
        """The training split's raw padded frames [N, T, F] and lengths [N] beside its
        channel variants: [1 + variants, N, T', F] and [1 + variants, N], padded alike."""
        import torch

        from models.networks import pad

        if not self.channels:
            return x[None], lengths[None]
        variants = [pad(frames) for frames in self.channels]
        t = max([x.shape[1], *(v.shape[1] for v, _ in variants)])
        grow = lambda v: torch.nn.functional.pad(v, (0, 0, 0, t - v.shape[1]))  # noqa: E731
        return (torch.stack([grow(x), *(grow(v) for v, _ in variants)]),
                torch.stack([lengths, *(n for _, n in variants)]))

    def add_training(self, utts: list[Utterance], feats: list[np.ndarray],
                     y: list[int] | None = None) -> None:
        """More training utterances (synthetic voices; generated non-speech, whose class
        index `y` is past the classes), normalised as the others."""
        self.utts += utts
        self.raw += feats
        self.x += [self.normalise_one(f) for f in feats]
        y = [self.classes.index(u.label) for u in utts] if y is None else y
        self.y = np.concatenate([self.y, y]).astype(int)
        self.split = np.concatenate([self.split, np.full(len(utts), TRAIN, np.int8)])

    def normalise_one(self, frames: np.ndarray) -> np.ndarray:
        """One utterance's raw frames [T, F], normalised as `x` is."""
        from data_loaders.audio import utterance_cmvn

        return self.norm.transform(frames) if self.norm else utterance_cmvn(frames)

    def normalise(self, x, lengths):
        """Raw padded frames [B, T, F] normalised as `x` is (padding stays zero), in torch:
        for batches changed in training."""
        import torch

        from models.networks import utterance_cmvn

        if not self.norm:
            return utterance_cmvn(x, lengths)
        valid = (torch.arange(x.shape[1])[None] < lengths[:, None])[..., None]
        mean, std = (torch.as_tensor(v, dtype=x.dtype) for v in (self.norm.mean_,
                                                                   self.norm.std_))
        return (x - mean) / std * valid

    def requests(self, which: int) -> pd.DataFrame:
        """The served model's request for a split's files: their bytes."""
        from models.speech_model import audio_request

        paths = [self.utts[i].path for i in np.flatnonzero(self.split == which)]
        return audio_request(paths, [p.stem for p in paths])


class SpeechTask(Task):
    """The part both speech tasks share; each adds its objective and evaluation."""

    Params = Params
    sample = SAMPLE  # the bundled data, for empty `data`
    served: str  # the served model's class in models/speech_model.py

    def validate(self, cfg: Config) -> None:
        if cfg.task.test_speaker and cfg.task.split != "speaker":
            raise ValueError(f"test_speaker: only split=speaker holds a speaker out (split is "
                             f"{cfg.task.split})")
        if cfg.model.cell == "mlp":
            raise ValueError(f"task={self.name} needs a recurrent cell (rnn, lstm, gru); an "
                             "MLP on mean-pooled features is trained as a baseline instead")
        cfg.task.validate()

    def run_name(self, cfg: Config) -> str:
        return f"{self.name}-{cfg.model.cell}"

    def prepare(self, cfg: Config) -> SpeechData:
        from data_loaders import audio
        from data_loaders.sequences import Normaliser

        p, d = cfg.task, cfg.data
        utts = audio.discover(cfg.path(d.data) if d.data else self.sample)
        cache = cfg.path(p.feature_cache) if p.feature_cache else None
        feats, utts, bad = audio.load_features(utts, p, cache, p.skip_bad)
        split = audio.split_utterances(utts, p.split, d.val_frac, d.test_frac, p.test_index,
                                       cfg.train.seed, p.test_speaker)
        for which, name in ((TRAIN, "train"), (VAL, "validation"), (TEST, "test")):
            if not (split == which).any():
                raise ValueError(f"split={p.split}: the {name} split is empty")
        classes = sorted({u.label for u in utts})
        y = np.array([classes.index(u.label) for u in utts])
        if p.normalise == "utterance":
            return SpeechData(utts, feats, [audio.utterance_cmvn(x) for x in feats], y, split,
                              classes, None, bad)
        norm = Normaliser().fit(np.concatenate([x for x, s in zip(feats, split, strict=True)
                                                if s == TRAIN]))
        return SpeechData(utts, feats, [norm.transform(x) for x in feats], y, split, classes,
                          norm, bad)

    def folds(self, cfg: Config) -> list[tuple[str, dict]]:
        """split=speaker without test_speaker: one fold per speaker."""
        from data_loaders import audio

        if cfg.task.split != "speaker" or cfg.task.test_speaker:
            return []
        utts = audio.discover(cfg.path(cfg.data.data) if cfg.data.data else self.sample)
        return [(f"test_speaker={s}", {"test_speaker": s}) for s in audio.speakers(utts)]

    def log_data(self, cfg: Config, data: SpeechData) -> None:
        import mlflow

        from pipeline.tasks import log_dataset

        source = str(cfg.path(cfg.data.data) if cfg.data.data else self.sample)
        log_dataset(data.table(), source, "audio")
        mlflow.log_table(data.table(), "data/files.json")  # each file: label, speaker, split
        mlflow.set_tag("data_origin", source)
        mlflow.log_metric("bad_files", len(data.bad))
        if data.bad:
            mlflow.log_text("\n".join(f"{p}: {why}" for p, why in data.bad),
                            "data/bad_files.txt")

    def network(self, cfg: Config, data: SpeechData) -> dict:
        m = cfg.model
        net = {k: getattr(m, k) for k in ("cell", "hidden", "layers", "dropout", "norm", "init")}
        return {"task": self.name, "model": {**net, "lookback": 1}, "n_in": cfg.task.dim,
                "audio": cfg.task.settings(), "normalise": cfg.task.normalise}

    def served_model(self) -> type:
        from models import speech_model

        return getattr(speech_model, self.served)

    def served_spec(self, net, cfg: Config, data: SpeechData) -> dict:
        """The spec stored with the model: the network's, and what serving needs beyond."""
        return self.network(cfg, data)

    def log_model(self, net, cfg: Config, data: SpeechData):
        from models import speech_model
        from models.served import log_served

        first = data.utts[0].path  # the input example: a real request, one file
        return log_served(self.served_model(), net, self.served_spec(net, cfg, data),
                          data.norm.to_dict() if data.norm else {},
                          speech_model.audio_request([first], [first.stem]))

    def memory_horizon(self, net, data: SpeechData, example, loss_fn, shift: int = 0,
                       utterances: int = 16, max_k: int = 50):
        """The memory horizon on up to `utterances` validation utterances: the gradient
        of loss_fn(prediction at the last step, target), with `example(i)` giving
        utterance i's (x [1, T, F], target), with respect to the state k frames back. K
        is at most the median utterance length (less `shift`, the frames without a
        target) less one, so most utterances reach it; shorter ones are left out. None
        when utterances are too short for k >= 1."""
        from pipeline.core.horizon import memory_horizon, state_gradient_norms

        idx = np.flatnonzero(data.split == VAL)
        steps = np.array([len(data.x[i]) - shift for i in idx])
        k = int(min(max_k, np.median(steps) - 1))
        if k < 1:
            return None
        usable = idx[steps > k]
        picks = usable[np.linspace(0, len(usable) - 1, min(utterances, len(usable))).astype(int)]
        mean = np.mean([state_gradient_norms(net, *example(i), k, loss_fn) for i in picks],
                       axis=0)
        return mean, memory_horizon(mean)

    def requests(self, path: Path, spec: dict, repair: str, market: str = "",
                 skip_bad: bool = False) -> tuple[pd.DataFrame, list]:
        from models.speech_model import audio_request

        files = ([path] if path.is_file() else  # a folder named x.wav is a folder
                 sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES
                        and not p.is_dir()))
        if not files:
            raise ValueError(f"input: no {'/'.join(AUDIO_SUFFIXES)} files under {path}")
        kept, bad = [], []
        for f in files:
            name = str(f.relative_to(path)) if path.is_dir() else f.name
            try:
                f.open("rb").close()
            except OSError as err:  # a link to nothing, a file without read permission
                if not skip_bad:
                    raise ValueError(f"input {name}: cannot read it ({err.strerror})") from None
                bad.append((name, f"cannot read it ({err.strerror})"))
                continue
            kept.append((f, name))
        if not kept:
            raise ValueError(f"input: none of the {len(files)} files under {path} can be read "
                             f"(the first: {bad[0][0]}: {bad[0][1]})")
        return audio_request(*zip(*kept, strict=True)), bad


# Forecasting frames: speech-forecast's objective, which speech-classify pretrains by
# (pretrain.py).

def apc_targets(x: np.ndarray, shift: int) -> np.ndarray:
    """[T, F] frames -> [T, F] targets: frame t+shift at step t, NaN for the last
    `shift` steps (no target reaches past the utterance)."""
    y = np.full_like(x, np.nan)
    y[: max(len(x) - shift, 0)] = x[shift:]
    return y


def forecast_padded(frames: list[np.ndarray], shift: int):
    """Utterances' frames, padded: x [N, T, F], lengths [N], targets y [N, T, F]."""
    import torch

    from models.networks import pad

    x, lengths = pad(frames)
    y = torch.full_like(x, float("nan"))
    for j, f in enumerate(frames):
        y[j, : len(f)] = torch.as_tensor(apc_targets(f, shift))
    return x, lengths, y


def forecast_l1(model, x, y) -> float:
    import torch

    from pipeline.core.trainer import masked_l1

    model.eval()
    with torch.no_grad():
        return masked_l1(model(x)[0], y).item()
