"""Task `speech-classify`: an utterance's frames -> its label (spoken digits, words),
or "unknown".

Training: full BPTT over each utterance, batches zero-padded after each end, the
class read at the last frame or as the mean over frames (`readout`; either way
padding cannot change a prediction), cross-entropy, with the augmentations of
pipeline/tasks/speech/augment.py drawn from the training seed; `val_accuracy` is logged per
epoch. Then, on validation, the temperature and the "unknown" rule
(models/calibration.py), stored with the model. Test: accuracy and macro-F1 beside
the majority class and an MLP on mean-pooled features (trained by the same loop),
the expected calibration error, the share of generated non-speech that the model
labels as a class (`false_accept`), and the confusion matrix. Served by
models/speech_model.py from audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from data_loaders import words
from data_loaders.sequences import TEST, TRAIN, VAL
from pipeline.core.params import Config, param
from pipeline.tasks import Evaluation, Objective, in_calls
from pipeline.tasks.speech import common
from pipeline.tasks.speech.common import SpeechData, SpeechTask
from pipeline.tasks.speech.pretrain import pretrain, validate_pretrain


@dataclass
class Params(common.Params):
    bidirectional: bool = param(False, "each layer also reads the utterance backwards")
    readout: str = param("last", "last: the output at the last frame; mean: the mean over "
                                 "the frames", ("last", "mean"))
    bucket: bool = param(False, "training: batch utterances of similar length together "
                                "(shuffled, then sorted by length within groups of 50 "
                                "batches): less padding, faster epochs")
    freq_warp: float = param(0.0, "training: vocal-tract-length perturbation, mel axis scaled "
                                  "by a factor in [1-w, 1+w]; 0: off")
    time_stretch: float = param(0.0, "training: tempo scaled by a factor in [1-s, 1+s]; 0: off")
    noise_snr: float = param(0.0, "training: noise added at an SNR in [d, d+20] dB; 0: off")
    freq_masks: int = param(0, "training: SpecAugment masks of up to n_mels/5 bands")
    time_masks: int = param(0, "training: SpecAugment masks of up to 0.15 of the frames")
    synthetic_voices: int = param(0, "training: this many espeak-ng voices (accent, variant, "
                                     "pitch, speed drawn from the seed) say every label; 0: none")
    synthetic_cache: str = param("data/cache/synthetic", "where synthetic voices are kept")
    nonspeech: int = param(0, "training: this many generated clips of each kind of non-speech "
                              "(tones, sweeps, noise, chords, clicks, sirens) as an extra "
                              "output, unknown; 0: none")
    unknown_words: int = param(0, "training: each synthetic voice also says this many common "
                                  "English words that are not digits (data_loaders/words.py), "
                                  "an unknown output of their own (reason: not a word it "
                                  "knows); needs synthetic_voices; 0: none")
    channel: int = param(0, "training: this many channel variants of each training recording "
                            "(gain, a resampling chain, band limits, equalisation, 8-bit "
                            "mu-law; drawn from the seed, listed in data/files.json); each "
                            "epoch hears every utterance through one, or as recorded; 0: off")
    pretrain_epochs: int = param(0, "training: first pretrain the recurrent layers for this "
                                    "many epochs by forecasting the input frames (speech-"
                                    "forecast's objective) on this run's training audio only, "
                                    "as recorded (pipeline/tasks/speech/pretrain.py); 0: off")
    ensemble: str = param("", "networks trained side by side on the same batches, each "
                              "with its own loss, their outputs averaged: one per comma-"
                              "separated view of the frames, global (normalised by the "
                              "training frames' mean and std) or utterance (by each "
                              "utterance's own); empty: one network")
    word_accept_rate: float = param(0.03, "with unknown_words: the \"not a word\" output's "
                                          "logit is shifted so that this share of validation "
                                          "words (data_loaders/words.py's VALIDATION, said by "
                                          "8 voices never trained on) come back as a digit; "
                                          "0: no shift")
    label_smoothing: float = param(0.0, "training: this share of each cross-entropy "
                                        "target spread evenly over all the outputs; "
                                        "0: off")
    unknown_rate: float = param(0.01, "share of validation utterances the confidence threshold "
                                      "may call unknown; 0: no threshold")

    def augment(self):
        from pipeline.tasks.speech.augment import Augment

        return Augment(self.freq_warp, self.time_stretch, self.noise_snr, self.freq_masks,
                       self.time_masks, self.sample_rate, self.n_mels)

    def loss(self):
        """The training loss: cross-entropy, its targets smoothed as `label_smoothing` says."""
        from torch import nn

        return partial(nn.functional.cross_entropy, label_smoothing=self.label_smoothing)

    def extra_outputs(self) -> tuple[str, ...]:
        """The unknown outputs after the classes, each named by the reason it gives."""
        from models.calibration import NOT_A_WORD, NOT_SPEECH

        return (NOT_SPEECH,) * bool(self.nonspeech) + (NOT_A_WORD,) * bool(self.unknown_words)

    def views(self) -> list[str]:
        """The ensemble's views, one per network ([]: one network, as `normalise` says)."""
        return [v.strip() for v in self.ensemble.split(",")] if self.ensemble.strip() else []

    def validate(self) -> Params:
        super().validate()
        views = self.views()
        if bad := [v for v in views if v not in ENSEMBLE_VIEWS]:
            raise ValueError(f"ensemble: each view must be one of {list(ENSEMBLE_VIEWS)}, got "
                             f"{bad[0]!r}")
        if "global" in views and self.normalise != "global":
            raise ValueError("ensemble: a global view reads the frames normalised by the "
                             "training frames' statistics; it needs normalise=global")
        if len(views) == 1 or len(views) > 4:
            raise ValueError(f"ensemble: give 2 to 4 views (or none), got {len(views)}")
        if views and self.pretrain_epochs:
            raise ValueError("ensemble and pretrain_epochs: pretraining starts one network; "
                             "give one of them")
        if self.features != "logmel" and (self.freq_warp or self.noise_snr):
            raise ValueError("freq_warp and noise_snr work on log-mel frames; use "
                             "features=logmel")
        for name in ("freq_warp", "time_stretch"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("freq_masks", "time_masks", "noise_snr", "synthetic_voices", "nonspeech",
                     "unknown_words", "channel", "pretrain_epochs"):
            if not 0 <= getattr(self, name) <= LIMITS.get(name, 1000):
                raise ValueError(f"{name} must be in [0, {LIMITS.get(name, 1000)}], got "
                                 f"{getattr(self, name)!r}")
        if self.unknown_words and not self.synthetic_voices:
            raise ValueError("unknown_words: the synthetic voices say the words; set "
                             "synthetic_voices > 0, or unknown_words=0")
        if self.synthetic_voices and not self.synthetic_cache:
            raise ValueError("synthetic_cache: give a folder for the synthetic voices")
        for name in ("unknown_rate", "word_accept_rate", "label_smoothing"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {getattr(self, name)!r}")
        return self


ENSEMBLE_VIEWS = ("global", "utterance")
LIMITS = {"synthetic_voices": 5000, "nonspeech": 1000, "noise_snr": 100, "channel": 8,
          "unknown_words": 20, "pretrain_epochs": 100}


class SpeechClassifyTask(SpeechTask):
    name = "speech-classify"
    Params = Params
    served = "SpeechClassifier"
    score_name = "log_loss"
    derived_params = ("temperature", "unknown_min_probability", "word_bias")

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        if cfg.task.synthetic_voices:
            from data_loaders.synthetic import espeak

            espeak("--version")  # missing espeak-ng: say so before any work
        if cfg.train.bptt != "full":
            raise ValueError(f"task={self.name} trains by full BPTT over each utterance; "
                             "use bptt=full")
        validate_pretrain(cfg)

    def prepare(self, cfg: Config) -> SpeechData:
        """The files, and in training the synthetic voices asked for."""
        data = super().prepare(cfg)
        if cfg.task.synthetic_voices:
            from data_loaders import synthetic

            p = cfg.task
            kept, feats, bad = synthetic_features(synthetic.synthesize(
                data.classes, p.synthetic_voices, cfg.path(p.synthetic_cache), cfg.train.seed),
                cfg)
            data.add_training(kept, feats)
            print(f"synthetic voices: {len(kept)} training utterances added"
                  + (f" ({len(bad)} unusable left out)" if bad else ""))
        if cfg.task.nonspeech:
            add_nonspeech(data, cfg.task, cfg.task.nonspeech, seed=1000 + cfg.train.seed)
        if cfg.task.unknown_words:
            add_words(data, cfg)
        if cfg.task.channel:
            add_channels(data, cfg)
        return data

    def network(self, cfg: Config, data: SpeechData) -> dict:
        spec = super().network(cfg, data)
        spec["model"].update(bidirectional=cfg.task.bidirectional, readout=cfg.task.readout,
                             ensemble=cfg.task.views())
        return {**spec, "n_out": len(data.classes) + len(cfg.task.extra_outputs()),
                "classes": data.classes}

    def pretrain(self, net, spec: dict, cfg: Config, data: SpeechData) -> str:
        return pretrain(net, spec, cfg, data) if cfg.task.pretrain_epochs else ""

    def objective(self, cfg: Config, data: SpeechData, net) -> Objective:
        import torch
        from torch import nn

        from models.networks import logits, read_out
        from pipeline.core.distributed import shard
        from pipeline.core.trainer import add_noise, batches

        device = next(net.parameters()).device
        xt, lt, yt = data.padded(TRAIN, raw=True)
        xt, lt = data.heard(xt, lt)  # [1 + channel variants, N, T, F], [1 + variants, N]
        xv, lv, yv = data.padded(VAL)
        xv, yv = xv.to(device), yv.to(device)
        t, augment = cfg.train, cfg.task.augment()
        k = len(cfg.task.views())  # an ensemble of k: each network learns from its own loss

        def outputs(x, n):  # [B, C], or [B, C, k], whose cross-entropy averages the k losses
            each = {"each": True} if k else {}
            return read_out(net(x.to(device), lengths=n, **each)[0], n, net.readout)

        def updates(gen, cursor):
            # every rank augments the whole batch (the draws from `gen` stay the same on
            # all ranks, so their shuffles agree), then keeps its share (distributed.py)
            for idx in batches(xt.shape[1], t.batch_size, gen, cursor,
                               lt[0] if cfg.task.bucket else None):
                via = (torch.randint(len(xt), (len(idx),), generator=gen) if len(xt) > 1
                       else torch.zeros(len(idx), dtype=torch.long))  # as recorded, or a channel
                steps = int(lt[via, idx].max())
                x, n = augment.raw(xt[via, idx, :steps], lt[via, idx], gen)
                x = augment.masks(data.normalise(x, n), n, gen)
                x, n, y = shard(add_noise(x, t.input_noise)), shard(n), shard(yt[idx])
                yield outputs(x, n), (y[:, None].repeat(1, k) if k else y).to(device)

        def validate() -> dict:
            out = logits(net, xv, lv)
            return {"val_loss": nn.functional.cross_entropy(out, yv).item(),
                    "val_accuracy": float((out.argmax(1) == yv).float().mean())}

        return Objective(updates, validate, cfg.task.loss(), "cross-entropy")

    def unknown_rule(self, net, cfg: Config, data: SpeechData) -> dict:
        """The temperature and the unknown rule, fit on validation (models/calibration.py):
        the validation files, and with unknown_words validation words too."""
        from models.calibration import fit_rule, word_bias
        from models.networks import logits

        xv, lv, yv = data.padded(VAL)
        p = cfg.task
        rule = fit_rule(logits(net, xv, lv), yv, len(data.classes), p.unknown_rate,
                        p.extra_outputs())
        if p.unknown_words and p.word_accept_rate:
            said = clip_logits(net, data, word_frames(cfg, words.VALIDATION, VALIDATION_VOICES))
            rule["word_bias"] = word_bias(said, rule, len(data.classes), p.word_accept_rate)
        return rule

    def served_spec(self, net, cfg: Config, data: SpeechData) -> dict:
        import mlflow

        rule = self.unknown_rule(net, cfg, data)
        mlflow.log_params({"temperature": f"{rule['temperature']:.4g}",
                           "unknown_min_probability": f"{rule['min_probability']:.4g}",
                           "word_bias": f"{rule.get('word_bias', 0.0):.4g}"})
        return {**super().served_spec(net, cfg, data), "unknown": rule}

    def horizon(self, net, cfg: Config, data: SpeechData):
        import torch
        from torch import nn

        if cfg.task.bidirectional:  # a backward layer sees every frame: no horizon to find
            return None
        if cfg.task.views():  # each network carries a state of its own: no one horizon
            return None

        def example(i):
            return torch.as_tensor(data.x[i])[None], torch.tensor(data.y[i])

        return self.memory_horizon(net, data, example, nn.functional.cross_entropy)

    def evaluate(self, net, cfg: Config, data: SpeechData) -> Evaluation:
        from models.calibration import apply_rule, expected_calibration_error
        from models.networks import logits
        from pipeline.core import plots
        from pipeline.core.metrics import classification_scores, confusion

        rule = self.unknown_rule(net, cfg, data)
        x, lengths, y = data.padded(TEST)
        probs, why = apply_rule(logits(net, x, lengths), rule, len(data.classes))
        pred, true, n = probs.argmax(1), y.numpy(), len(data.classes)
        rejected = np.array([bool(w) for w in why])
        majority = np.bincount(data.y[data.split == TRAIN], minlength=n)[:n].argmax()
        model = {**classification_scores(pred, true, n),
                 "accuracy_with_unknown": float(np.mean((pred == true) & ~rejected)),
                 "unknown_share": float(rejected.mean()),
                 "ece": expected_calibration_error(probs, true),
                 "false_accept": false_accept(net, cfg, data, rule)}
        if cfg.task.synthetic_voices:  # espeak-ng is there: words it never trained on
            model["word_false_accept"] = word_false_accept(net, cfg, data, rule)
        table = {"model": model,
                 "majority": classification_scores(np.full_like(true, majority), true, n),
                 "mlp_mean_pooled": classification_scores(mlp_baseline(cfg, data), true, n)}
        figure = plots.confusion_matrix(confusion(pred, true, n), data.classes)
        return Evaluation(table, {"plots/confusion.png": figure})

    def target(self, spec: dict) -> str:
        return "classes " + ",".join(spec["classes"])

    def validation_scores(self, models: list, cfg: Config, data: SpeechData) -> list[float]:
        """Log loss (mean -log p of the true label) of each served model on the
        validation files, from their audio."""
        import pandas as pd

        request = data.requests(VAL)
        true = [data.classes[c] for c in data.y[data.split == VAL]]
        scores = []
        for model in models:
            p = pd.concat([model.predict(None, part) for part in in_calls(model, request)],
                          ignore_index=True).to_dict("records")
            scores.append(float(np.mean([-np.log(max(r[f"p_{c}"], 1e-12))
                                         for r, c in zip(p, true, strict=True)])))
        return scores


def nonspeech_frames(settings, n: int, seed: int) -> list[np.ndarray]:
    """Raw frames of generated non-speech (data_loaders/nonspeech.py), silence left out
    (it never reaches the network: the served model calls it "unknown" at once)."""
    from data_loaders import audio, nonspeech

    clips = [c for kind, cs in nonspeech.signals(settings.sample_rate, seed, n).items()
             if kind != "silence" for c in cs]
    cut = [audio.trimmed(c, settings) for c in clips]
    return [audio.frames(c, settings) for c, why in cut if not why]


def add_nonspeech(data: SpeechData, settings, n: int, seed: int) -> None:
    from data_loaders.audio import Utterance

    frames = nonspeech_frames(settings, n, seed)
    utts = [Utterance(Path(f"nonspeech-{seed}/{i}"), "unknown", None, None)
            for i in range(len(frames))]
    data.add_training(utts, frames, [len(data.classes)] * len(frames))
    print(f"non-speech: {len(frames)} generated training clips as the unknown output")


def synthetic_features(paths: list[Path], cfg: Config, label: str = ""):
    """(utterances, their features, unusable files) of synthetic clips
    (`{label}_synth{k}_0.wav`), labelled by their file name unless `label` is given."""
    from data_loaders import audio

    utts = [audio.Utterance(f, label or f.stem.split("_")[0], f.stem.split("_")[1], 0)
            for f in paths]
    cache = cfg.path(cfg.task.feature_cache) if cfg.task.feature_cache else None
    feats, kept, bad = audio.load_features(utts, cfg.task, cache, skip_bad=True)
    return kept, feats, bad


def add_words(data: SpeechData, cfg: Config) -> None:
    """Each synthetic voice says unknown_words training words (data_loaders/words.py),
    as the last unknown output."""
    from data_loaders import synthetic

    p = cfg.task
    kept, feats, _ = synthetic_features(synthetic.say_words(
        words.TRAINING, range(p.synthetic_voices), p.unknown_words,
        cfg.path(p.synthetic_cache), cfg.train.seed), cfg, "unknown")
    data.add_training(kept, feats, [len(data.classes) + len(p.extra_outputs()) - 1] * len(kept))
    print(f"unknown words: {len(kept)} training clips of {len(words.TRAINING)} words as the "
          "unknown output")


# voice numbers no training run draws (LIMITS): words to test on, and to validate on
HELD_OUT_VOICES = range(100_000, 100_008)
VALIDATION_VOICES = range(200_000, 200_008)
FRESH_VOICES = range(300_000, 300_008)  # say words.FRESH: no run reads them


def word_frames(cfg: Config, said: tuple[str, ...], voices: range) -> list[np.ndarray]:
    """Raw frames of 25 of `said` spoken by each of `voices` (none of them trained on)."""
    from data_loaders import synthetic

    return synthetic_features(synthetic.say_words(
        said, voices, 25, cfg.path(cfg.task.synthetic_cache), seed=0), cfg, "unknown")[1]


def clip_logits(net, data: SpeechData, frames: list[np.ndarray]):
    """The network's outputs for clips' raw frames, normalised as the training ones."""
    from models.networks import logits, pad

    x, lengths = pad([data.normalise_one(f) for f in frames])
    return logits(net, x, lengths)


def word_false_accept(net, cfg: Config, data: SpeechData, rule: dict) -> float:
    """The share of 200 clips of words never trained on nor validated on (words.HELD_OUT,
    25 of them said by each of 8 synthetic voices never heard) that the model labels as a
    digit."""
    why = unknown_reasons(net, data, rule, word_frames(cfg, words.HELD_OUT, HELD_OUT_VOICES))
    return sum(not w for w in why) / len(why)


def add_channels(data: SpeechData, cfg: Config) -> None:
    """Each training recording heard through cfg.task.channel random channels
    (data_loaders/channel.py); generated non-speech, which has no recording, as it is."""
    from data_loaders.audio import channel_features

    p, train = cfg.task, np.flatnonzero(data.split == TRAIN)
    files = [i for i in train if data.utts[i].path.is_file()]
    cache = cfg.path(p.feature_cache) if p.feature_cache else None
    feats, words = channel_features([data.utts[i] for i in files], p, p.channel,
                                    cfg.train.seed, cache)
    at = {i: j for j, i in enumerate(files)}
    data.channels = [[f[at[i]] if i in at else data.raw[i] for i in train] for f in feats]
    data.chains = [[w[at[i]] if i in at else "" for i in train] for w in words]
    print(f"channel: {len(files)} training recordings heard through {p.channel} random "
          "channels each")


def false_accept(net, cfg: Config, data: SpeechData, rule: dict, n: int = 12) -> float:
    """The share of generated non-speech (other draws than training's; silence left out,
    which never reaches the network) that the model labels as a class: what the
    served model answers for them."""
    from data_loaders import nonspeech

    why = unknown_reasons(net, data, rule, nonspeech_frames(cfg.task, n, seed=1))
    return sum(not w for w in why) / (n * (len(nonspeech.KINDS) - 1))


def unknown_reasons(net, data: SpeechData, rule: dict, frames: list[np.ndarray]) -> list[str]:
    """Why the model calls each clip's raw frames unknown ("": it names a class)."""
    from models.calibration import apply_rule

    return apply_rule(clip_logits(net, data, frames), rule, len(data.classes))[1]


def mlp_baseline(cfg: Config, data: SpeechData) -> np.ndarray:
    """Test predictions of an MLP on mean-pooled features, trained with the same loop."""
    import torch
    from torch import nn

    from pipeline.core.trainer import batches, fit, seed_everything

    seed_everything(cfg.train.seed)
    pooled = torch.as_tensor(np.stack([x.mean(0) for x in data.x]))
    y = torch.as_tensor(data.y)
    sel = {s: torch.as_tensor(np.flatnonzero(data.split == s)) for s in (TRAIN, VAL, TEST)}
    net = nn.Sequential(nn.Linear(pooled.shape[1], cfg.model.hidden), nn.Tanh(),
                        nn.Linear(cfg.model.hidden, int(data.y.max()) + 1))  # + unknown

    def updates(gen, cursor):
        for idx in batches(len(sel[TRAIN]), cfg.train.batch_size, gen, cursor):
            yield net(pooled[sel[TRAIN][idx]]), y[sel[TRAIN][idx]]

    def validate() -> dict:
        with torch.no_grad():
            return {"val_loss": nn.functional.cross_entropy(net(pooled[sel[VAL]]),
                                                            y[sel[VAL]]).item()}

    fit(net, cfg.train, updates, validate, nn.functional.cross_entropy, progress=False)
    with torch.no_grad():
        return net(pooled[sel[TEST]]).argmax(1).numpy()


TASK = SpeechClassifyTask()
