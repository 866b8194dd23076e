"""Pretraining inside a speech-classify run (`pretrain_epochs`): speech-forecast's
objective (the input frame, log-mel or MFCC, SHIFT steps ahead, L1) by full BPTT per
utterance, on this run's training audio only (as recorded: the channel variants are
the classifier's), then the classifier starts from the forecaster's
recurrent layers. Under split=speaker each fold pretrains on its own training
speakers (and the synthetic voices), so the held-out voice is never heard, which a
forecaster of another run (`init_from`) cannot promise.

A bidirectional layer's backward direction reads each utterance from its end: it is
pretrained by a forecaster of its own on the utterances reversed (the frame SHIFT
steps behind)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from data_loaders.sequences import TRAIN, VAL
from pipeline.tasks.speech.common import SHIFT, forecast_l1, forecast_padded


def pretrain(net, spec: dict, cfg, data) -> str:
    """Pretrain `net`'s recurrent layers in place; returns what was done, in words."""
    from models.networks import build_model

    device = next(net.parameters()).device
    said = []
    for direction in ("forward", "backward")[: 1 + net.bidirectional]:
        turn = np.asarray if direction == "forward" else lambda f: np.ascontiguousarray(f[::-1])
        forecaster = build_model({**spec["model"], "bidirectional": False}, spec["n_in"],
                                 spec["n_in"]).to(device)
        before, after = fit_forecaster(forecaster, cfg, direction, *(
            [turn(data.x[i]) for i in np.flatnonzero(data.split == s)] for s in (TRAIN, VAL)))
        copy_layers(forecaster, net, reverse=direction == "backward")
        said.append(f"{direction}: validation L1 {before:.3f} -> {after:.3f}")
    n = cfg.task.pretrain_epochs
    return (f"{n} epoch{'s' * (n > 1)} forecasting {SHIFT} frames on "
            f"{int((data.split == TRAIN).sum())} training utterances; " + "; ".join(said))


def fit_forecaster(forecaster, cfg, direction: str, train: list, val: list):
    """Train by the run's settings for pretrain_epochs; validation L1 before and after."""
    from pipeline.core.trainer import batches, fit, masked_l1

    device = next(forecaster.parameters()).device
    x, lengths, y = forecast_padded(train, SHIFT)
    xv, _, yv = (a.to(device) for a in forecast_padded(val, SHIFT))
    t = replace(cfg.train, epochs=cfg.task.pretrain_epochs, patience=0)

    def updates(gen, cursor):
        for idx in batches(len(x), t.batch_size, gen, cursor,
                           lengths if cfg.task.bucket else None):
            steps = int(lengths[idx].max())
            out, _ = forecaster(x[idx, :steps].to(device))
            yield out, y[idx, :steps].to(device)

    def validate() -> dict:
        return {"val_loss": forecast_l1(forecaster, xv, yv)}

    def say(m: dict) -> None:
        print(f"pretrain {direction} epoch {m['epoch'] + 1}/{t.epochs}  train L1 "
              f"{m['train_loss']:.4f}  val L1 {m['val_loss']:.4f}  {m['epoch_seconds']:.1f} s",
              flush=True)

    before = validate()["val_loss"]
    history = fit(forecaster, t, updates, validate, masked_l1, on_epoch=say, progress=False)
    return before, history.best_val_loss


def copy_layers(forecaster, net, reverse: bool) -> None:
    """The forecaster's recurrent layers (and the norms between them) into `net`: as they
    are, or into the backward direction (`reverse`, one layer: see validate_pretrain)."""
    import torch

    ours = net.state_dict()
    theirs = {(f"{k}_reverse" if reverse else k): v
              for k, v in forecaster.state_dict().items() if not k.startswith("head.")}
    with torch.no_grad():
        for k, v in theirs.items():
            ours[k].copy_(v)


def validate_pretrain(cfg) -> None:
    """The settings pretraining can work with, said before any work."""
    if not cfg.task.pretrain_epochs:
        return
    from pipeline.core import distributed

    if distributed.launched():
        raise ValueError("pretrain_epochs: pretraining runs in one process; under torchrun, "
                         "pretrain with task=speech-forecast and start from it (init_from)")
    if cfg.train.init_from:
        raise ValueError("pretrain_epochs and init_from both start the network; give one")
    if cfg.task.bidirectional and cfg.model.layers > 1:
        raise ValueError("pretrain_epochs: a forecaster's layer reads one direction, so it "
                         "can pretrain a bidirectional network of one layer only; use "
                         "layers=1 or bidirectional=false")
