"""Speech: audio files -> log-mel sequences -> a recurrent network, in one MLflow run.

task=classify: utterance -> label, full BPTT over each utterance.
task=forecast: the log-mel frame `shift` steps ahead (autoregressive predictive
coding, L1 loss), by full BPTT per utterance or truncated BPTT over the training
utterances concatenated into one stream laid out in lanes.

Reads: a folder of audio (`data`: FSDD names, or one folder per label).
Writes: an MLflow run with the resolved config as params, the file list as its
dataset, per-epoch metrics, test metrics beside the baselines (classify:
accuracy and macro-F1 beside the majority class and an MLP on mean-pooled
features, and the confusion matrix; forecast: L1 beside copying the last
frame), the list of skipped bad files, and the `model` (a pyfunc that takes
audio); then a Model Registry version.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from data_loaders import audio
from data_loaders.sequences import SPLIT_NAMES, TEST, TRAIN, VAL, Normaliser, pack_lanes
from models.networks import last_step, logits, pad
from pipeline import plots
from pipeline.config import Config
from pipeline.horizon import THRESHOLD, memory_horizon, state_gradient_norms
from pipeline.prepare import resolve
from pipeline.tracking import (
    MODEL_URI_TAG,
    epoch_logger,
    log_dataset,
    log_new_params,
    run_checkpoints,
    start_run,
)
from pipeline.train import new_network
from pipeline.trainer import (
    Cursor,
    History,
    add_noise,
    batches,
    fit,
    masked_l1,
    seed_everything,
    tbptt_updates,
)


@dataclass
class SpeechData:
    utts: list[audio.Utterance]
    x: list[np.ndarray]  # normalised frames [T_i, F] per utterance
    y: np.ndarray  # class index per utterance
    split: np.ndarray  # 0 train, 1 val, 2 test
    classes: list[str]
    norm: Normaliser | None  # global normaliser (None: per-utterance)
    bad: list[tuple[str, str]]  # skipped files and why

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"path": [str(u.path) for u in self.utts],
                             "label": [u.label for u in self.utts],
                             "speaker": [u.speaker for u in self.utts],
                             "index": [u.index for u in self.utts],
                             "frames": [len(x) for x in self.x],
                             "split": [SPLIT_NAMES[s] for s in self.split]})


def prepare_speech(cfg: Config) -> SpeechData:
    sp = cfg.speech
    utts = audio.discover(resolve(cfg.data.path()))
    cache = resolve(sp.feature_cache) if sp.feature_cache else None
    feats, utts, bad = audio.load_features(utts, cfg.audio, cache, sp.skip_bad)
    split = audio.split_utterances(utts, sp.split, cfg.data.val_frac, cfg.data.test_frac,
                                   sp.test_index, cfg.train.seed)
    for which, name in ((TRAIN, "train"), (VAL, "validation"), (TEST, "test")):
        if not (split == which).any():
            raise ValueError(f"split={sp.split}: the {name} split is empty")
    classes = sorted({u.label for u in utts})
    y = np.array([classes.index(u.label) for u in utts])
    if sp.normalise == "utterance":
        return SpeechData(utts, [audio.utterance_cmvn(x) for x in feats], y, split, classes,
                          None, bad)
    norm = Normaliser().fit(np.concatenate([x for x, s in zip(feats, split, strict=True)
                                            if s == TRAIN]))
    return SpeechData(utts, [norm.transform(x) for x in feats], y, split, classes, norm, bad)


def utterance_updates(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor,
                      y: torch.Tensor, batch_size: int, generator: torch.Generator,
                      noise: float = 0.0, at_last: bool = True, cursor: Cursor | None = None):
    """Full BPTT per utterance: shuffled batches, trimmed to their longest member.
    at_last: the output at each utterance's last frame against y [N] (classify);
    otherwise every frame against y [N, T, F], NaN (padding) carrying no loss."""
    for idx in batches(len(x), batch_size, generator, cursor):
        steps = int(lengths[idx].max())
        out, _ = model(add_noise(x[idx, :steps], noise))
        yield (last_step(out, lengths[idx]), y[idx]) if at_last else (out, y[idx, :steps])


def scores(pred: np.ndarray, true: np.ndarray, n_classes: int) -> dict:
    """Accuracy and macro-F1 (the mean of per-class F1; a class never predicted and
    never present is left out)."""
    f1 = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (true == c))
        fp, fn = np.sum((pred == c) & (true != c)), np.sum((pred != c) & (true == c))
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(pred == true)), "macro_f1": float(np.mean(f1))}


def confusion(pred: np.ndarray, true: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), int)
    np.add.at(m, (true, pred), 1)
    return m


def split_tensors(data: SpeechData, which: int):
    idx = np.flatnonzero(data.split == which)
    x, lengths = pad([data.x[i] for i in idx])
    return x, lengths, torch.as_tensor(data.y[idx])


def train_classifier(cfg: Config, data: SpeechData, on_epoch=None,
                     checkpoints=None) -> tuple[nn.Module, History]:
    net = new_network(cfg, model_spec(cfg, data)["model"], cfg.audio.dim, len(data.classes))
    device = next(net.parameters()).device
    (xt, lt, yt), (xv, lv, yv) = (split_tensors(data, s) for s in (TRAIN, VAL))
    xt, yt, xv, yv = xt.to(device), yt.to(device), xv.to(device), yv.to(device)

    def val_loss() -> float:
        return nn.functional.cross_entropy(logits(net, xv, lv), yv).item()

    def log(m: dict) -> None:
        if "val_accuracy" not in m:  # epochs of a resumed checkpoint have theirs
            m["val_accuracy"] = float((logits(net, xv, lv).argmax(1) == yv).float().mean())
        if on_epoch:
            on_epoch(m)

    hist = fit(net, cfg.train, lambda gen, cursor: utterance_updates(
        net, xt, lt, yt, cfg.train.batch_size, gen, cfg.train.input_noise, cursor=cursor),
        val_loss, nn.functional.cross_entropy, log, checkpoints=checkpoints,
        resume=bool(cfg.tracking.resume_run_id))
    return net.cpu(), hist


def mlp_baseline(cfg: Config, data: SpeechData) -> np.ndarray:
    """Test predictions of an MLP on mean-pooled features, trained with the same loop."""
    seed_everything(cfg.train.seed)
    pooled = torch.as_tensor(np.stack([x.mean(0) for x in data.x]))
    y = torch.as_tensor(data.y)
    sel = {s: torch.as_tensor(np.flatnonzero(data.split == s)) for s in (TRAIN, VAL, TEST)}
    net = nn.Sequential(nn.Linear(pooled.shape[1], cfg.model.hidden), nn.Tanh(),
                        nn.Linear(cfg.model.hidden, len(data.classes)))

    def updates(gen, cursor):
        for idx in batches(len(sel[TRAIN]), cfg.train.batch_size, gen, cursor):
            yield net(pooled[sel[TRAIN][idx]]), y[sel[TRAIN][idx]]

    def val_loss():
        with torch.no_grad():
            return nn.functional.cross_entropy(net(pooled[sel[VAL]]), y[sel[VAL]]).item()

    fit(net, cfg.train, updates, val_loss, nn.functional.cross_entropy, progress=False)
    with torch.no_grad():
        return net(pooled[sel[TEST]]).argmax(1).numpy()


def apc_targets(x: np.ndarray, shift: int) -> np.ndarray:
    """[T, F] frames -> [T, F] targets: frame t+shift at step t, NaN for the last
    `shift` steps (no target reaches past the utterance)."""
    y = np.full_like(x, np.nan)
    y[: max(len(x) - shift, 0)] = x[shift:]
    return y


def forecast_tensors(data: SpeechData, which: int, shift: int):
    """Padded frames x [N, T, F], lengths [N], and targets y [N, T, F] (NaN where none)."""
    idx = np.flatnonzero(data.split == which)
    x, lengths = pad([data.x[i] for i in idx])
    y = torch.full_like(x, float("nan"))
    for j, i in enumerate(idx):
        y[j, : len(data.x[i])] = torch.as_tensor(apc_targets(data.x[i], shift))
    return x, lengths, y


def forecast_stream(data: SpeechData, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """The training utterances end to end, x [T, F] and y [T, F]. Targets never cross
    from one utterance into the next (NaN there); the carried state does, as in
    language modelling over concatenated documents."""
    idx = np.flatnonzero(data.split == TRAIN)
    return (np.concatenate([data.x[i] for i in idx]),
            np.concatenate([apc_targets(data.x[i], shift) for i in idx]))


@torch.no_grad()
def forecast_l1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return masked_l1(model(x)[0], y).item()


def train_forecaster(cfg: Config, data: SpeechData, on_epoch=None,
                     checkpoints=None) -> tuple[nn.Module, History]:
    t, shift = cfg.train, cfg.speech.shift
    net = new_network(cfg, model_spec(cfg, data)["model"], cfg.audio.dim, cfg.audio.dim)
    device = next(net.parameters()).device
    xt, lt, yt = (a.to(device) for a in forecast_tensors(data, TRAIN, shift))
    xv, _, yv = (a.to(device) for a in forecast_tensors(data, VAL, shift))
    lt = lt.cpu()  # lengths index on the host
    if t.bptt == "truncated":
        sx, sy = forecast_stream(data, shift)
        xl, yl = (torch.as_tensor(a, device=device) for a in pack_lanes([sx], [sy], t.lanes))

        def updates(gen, cursor):
            return tbptt_updates(net, xl, yl, t.k1, t.k2, t.input_noise, cursor)
    else:
        def updates(gen, cursor):
            return utterance_updates(net, xt, lt, yt, t.batch_size, gen, t.input_noise,
                                     at_last=False, cursor=cursor)

    hist = fit(net, t, updates, lambda: forecast_l1(net, xv, yv), masked_l1, on_epoch,
               checkpoints=checkpoints, resume=bool(cfg.tracking.resume_run_id))
    return net.cpu(), hist


def evaluate_forecaster(net: nn.Module, cfg: Config, data: SpeechData) -> dict:
    """Test L1 (normalised log-mel units) of the model and of copying the last frame."""
    x, _, y = forecast_tensors(data, TEST, cfg.speech.shift)
    return {"model": {"l1": forecast_l1(net, x, y)},
            "copy_last": {"l1": masked_l1(x, y).item()}}


def speech_horizon(net: nn.Module, cfg: Config, data: SpeechData, utterances: int = 16,
                   max_k: int = 50) -> tuple[np.ndarray, int] | None:
    """The memory horizon on up to `utterances` validation utterances: the gradient of
    the loss at the last frame (classify: against the label; forecast: against the
    frame `shift` ahead) with respect to the state k frames back. K is at most the
    median utterance length less one, so most utterances reach it; shorter ones are
    left out. None when utterances are too short for k >= 1 (a large `shift`)."""
    classify = cfg.speech.task == "classify"
    shift = 0 if classify else cfg.speech.shift
    idx = np.flatnonzero(data.split == VAL)
    steps = np.array([len(data.x[i]) - shift for i in idx])
    k = int(min(max_k, np.median(steps) - 1))
    if k < 1:
        return None
    usable = idx[steps > k]
    curves = []
    for i in usable[np.linspace(0, len(usable) - 1, min(utterances, len(usable))).astype(int)]:
        x = torch.as_tensor(data.x[i], dtype=torch.float32)
        if classify:
            curves.append(state_gradient_norms(net, x[None], torch.tensor(data.y[i]), k,
                                               nn.functional.cross_entropy))
        else:
            curves.append(state_gradient_norms(net, x[None, :-shift], x[-1], k,
                                               nn.functional.l1_loss))
    mean = np.mean(curves, axis=0)
    return mean, memory_horizon(mean)


def model_spec(cfg: Config, data: SpeechData) -> dict:
    m = cfg.model
    net = {k: getattr(m, k) for k in ("cell", "hidden", "layers", "dropout", "norm", "init")}
    return {"domain": "speech", "task": cfg.speech.task, "model": {**net, "lookback": 1},
            "classes": data.classes, "audio": dict(vars(cfg.audio)),
            "normalise": cfg.speech.normalise, "shift": cfg.speech.shift}


def evaluate(net: nn.Module, cfg: Config, data: SpeechData) -> tuple[dict, np.ndarray]:
    x, lengths, y = split_tensors(data, TEST)
    pred = logits(net, x, lengths).argmax(1).numpy()
    true = y.numpy()
    n = len(data.classes)
    majority = np.bincount(data.y[data.split == TRAIN], minlength=n).argmax()
    table = {"model": scores(pred, true, n),
             "majority": scores(np.full_like(true, majority), true, n),
             "mlp_mean_pooled": scores(mlp_baseline(cfg, data), true, n)}
    return table, confusion(pred, true, n)


def run(cfg: Config, run_name: str | None = None, nested: bool = False) -> dict:
    """The `main` entry point for domain=speech: one run, one registered version (none
    when register=false or the run is a sweep's child)."""
    from models.speech_pyfunc import log_speech_model
    from pipeline.evaluate import format_table, test_metrics
    from pipeline.register import register_run

    data = prepare_speech(cfg)
    counts = ", ".join(f"{name} {int((data.split == s).sum())}"
                       for s, name in SPLIT_NAMES.items())
    print(f"{len(data.utts)} utterances, {len(data.classes)} classes ({counts}); "
          f"{len(data.bad)} bad files skipped")
    name = run_name or f"speech-{cfg.speech.task}-{cfg.model.cell}"
    with start_run(cfg, name, nested=nested) as active:
        log_new_params(cfg.params())
        if not cfg.tracking.resume_run_id:  # a resumed run has these
            log_dataset(data.table(), cfg.data.path(), "audio")
            mlflow.log_metric("bad_files", len(data.bad))
            if data.bad:
                mlflow.log_text("\n".join(f"{p}: {why}" for p, why in data.bad),
                                "data/bad_files.txt")
        train = train_classifier if cfg.speech.task == "classify" else train_forecaster
        net, hist = train(cfg, data, epoch_logger(active.info.run_id), run_checkpoints(cfg))
        mlflow.log_metrics({"best_val_loss": hist.best_val_loss, "best_epoch": hist.best_epoch})
        plots.log_figure(plots.loss_curves(hist.epochs), "plots/loss_curves.png")
        if horizon := speech_horizon(net, cfg, data):
            mlflow.log_metric("memory_horizon", horizon[1])
            plots.log_figure(plots.gradient_horizon(*horizon, THRESHOLD),
                             "plots/memory_horizon.png")
        if cfg.speech.task == "classify":
            table, matrix = evaluate(net, cfg, data)
            plots.log_figure(plots.confusion_matrix(matrix, data.classes), "plots/confusion.png")
        else:
            table = evaluate_forecaster(net, cfg, data)
        mlflow.log_metrics(test_metrics(table))
        info = log_speech_model(net, model_spec(cfg, data), data.norm, data.utts[0].path)
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    print(format_table(table))
    if cfg.tracking.register and not nested:
        register_run(active.info.run_id, cfg.model_name())
    return {"run_id": active.info.run_id, "table": table, "history": hist}
