"""The BPTT trainer: full BPTT over windows, truncated BPTT(k1, k2) over streams.

Both modes are generators of (prediction, target) pairs, one pair per update;
`train_epoch` turns any such generator into optimiser steps, so the loop
(loss, backward, clip, step) is written once.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from data_loaders.sequences import TRAIN, VAL, pack_lanes, windows
from models.networks import forecast_at
from pipeline.config import TrainConfig


class NumericalFault(FloatingPointError):
    """A non-finite loss or gradient; training stops before the weights are touched."""


@dataclass
class Streams:
    """Normalised series for training: x[i] [T_i, F], y[i] [T_i, out] (NaN where there is
    no target), split[i] [T_i] (the split of the sample anchored at each step)."""

    x: list[torch.Tensor]
    y: list[torch.Tensor]
    split: list[np.ndarray]

    def anchors(self, which: int, lookback: int = 1) -> list[np.ndarray]:
        """Per series, the steps anchoring a `which` sample with a full lookback."""
        return [np.flatnonzero((s == which) & (np.arange(len(s)) >= lookback - 1))
                for s in self.split]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def repackage(state):
    """Detach a carried state from its history (recursing into LSTM (h, c) tuples and
    per-layer lists), so the next update's backward pass stops here."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(repackage(s) for s in state)


def add_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    return x + std * torch.randn_like(x) if std > 0 else x


def gather_windows(streams: Streams, anchors: list[np.ndarray], lookback: int):
    """Windows [N, L, F] ending at the anchors and their targets [N, out]."""
    xs, ys = [], []
    for x, y, a in zip(streams.x, streams.y, anchors, strict=True):
        if len(a):
            xs.append(windows(x, lookback)[torch.as_tensor(a - lookback + 1)])
            ys.append(y[torch.as_tensor(a)])
    if not xs:
        raise ValueError(f"no samples with a full lookback of {lookback} steps")
    return torch.cat(xs), torch.cat(ys)


def window_updates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   generator: torch.Generator, noise: float = 0.0) -> Iterator:
    """Full BPTT: shuffled minibatches of windows [B, L, F], each started from a zero
    state; the loss is on the last step, and backpropagates to the first."""
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        out, _ = model(add_noise(x[idx], noise))
        yield out[:, -1], y[idx]


def tbptt_updates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k1: int, k2: int,
                  noise: float = 0.0) -> Iterator:
    """Truncated BPTT(k1, k2) along lanes x [B, T, F], y [B, T, out].

    Every k1 steps, one update: the loss on those k1 new steps, backpropagated
    through the last k2 steps (k2 >= k1). The forward pass restarts from the
    detached state k2 steps back, so for k1 < k2 each step is computed k2/k1
    times, and no gradient reaches further back than k2 steps:

        lane  ... |<-------- k2 -------->|
                  s           s'         e        loss on [e-k1, e); the state at
                  |  carried  |  k1 new  |        s' (detached) starts the next
                                                  update's window [s', e+k1)
    """
    steps = x.shape[1]
    ends = list(range(k1, steps + 1, k1)) + ([steps] if steps % k1 else [])
    starts = [max(0, e - k2) for e in ends]
    state, prev_end = None, 0
    for i, end in enumerate(ends):
        start = starts[i]
        resume = starts[i + 1] if i + 1 < len(ends) else end
        xs = add_noise(x[:, start:end], noise)
        out_a, mid = model(xs[:, : resume - start], state) if resume > start else (None, state)
        out_b, last = model(xs[:, resume - start:], mid) if end > resume else (None, mid)
        out = out_b if out_a is None else out_a if out_b is None else torch.cat([out_a, out_b], 1)
        state = repackage(mid if resume < end else last)
        yield out[:, prev_end - start:], y[:, prev_end:end]
        prev_end = end


def training_lanes(streams: Streams, lanes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every series' training stream (the prefix of the series before validation), all
    series side by side in about `lanes` lanes, on the streams' device: x [B, T, F],
    y [B, T, out]. Built once; every epoch of truncated BPTT walks the same lanes."""
    xs, ys = [], []
    for x, y, split in zip(streams.x, streams.y, streams.split, strict=True):
        train = np.flatnonzero(split == TRAIN)
        if len(train):
            xs.append(x[: train[-1] + 1].cpu().numpy())
            ys.append(y[: train[-1] + 1].cpu().numpy())
    xl, yl = pack_lanes(xs, ys, lanes)
    device = streams.x[0].device
    return torch.as_tensor(xl, device=device), torch.as_tensor(yl, device=device)


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE over the targets that exist (lane padding is NaN)."""
    keep = ~torch.isnan(target)
    return (pred[keep] - target[keep]).pow(2).mean()


def masked_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the targets that exist (padding is NaN)."""
    keep = ~torch.isnan(target)
    return (pred[keep] - target[keep]).abs().mean()


def train_epoch(model: nn.Module, updates: Iterator, optimizer: torch.optim.Optimizer,
                clip: float, loss_fn: Callable = masked_mse) -> dict:
    """One optimiser step per (prediction, target) pair. Returns the mean training loss
    and the mean gradient norm before clipping."""
    model.train()
    loss_sum = norm_sum = 0.0
    count = steps = 0
    for pred, target in updates:
        loss = loss_fn(pred, target)
        if not torch.isfinite(loss):
            raise NumericalFault(f"non-finite loss ({loss.item()}) at update {steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Clipping bounds the step when a rare window makes the gradient explode
        # (common in RNNs); the pre-clip norm is returned so it can be watched.
        norm = nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf)
        if not torch.isfinite(norm):
            raise NumericalFault(f"non-finite gradient norm ({norm.item()}) at update {steps}")
        optimizer.step()
        n = int((~torch.isnan(target)).sum()) if target.is_floating_point() else len(target)
        loss_sum += loss.item() * n
        norm_sum += norm.item()
        count += n
        steps += 1
    if steps == 0:
        raise ValueError("no training updates: the training split is empty "
                         "(too little data for lookback, lanes or val/test fractions)")
    return {"train_loss": loss_sum / count, "grad_norm": norm_sum / steps}


def split_loss(model: nn.Module, streams: Streams, which: int, stateful: bool,
               lookback: int) -> float:
    """Mean squared error (normalised units) over one split of all series."""
    errs = []
    for x, y, a in zip(streams.x, streams.y, streams.anchors(which, lookback), strict=True):
        if len(a):
            errs.append((forecast_at(model, x, a, stateful, lookback) - y[torch.as_tensor(a)]) ** 2)
    if not errs:
        raise ValueError("the validation split has no samples with a full lookback")
    return torch.cat(errs).mean().item()


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = {
        "none": None,
        "step": lambda: torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma),
        "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=cfg.gamma, patience=max(cfg.patience // 2, 1)),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs),
    }[cfg.schedule]
    return opt, sched() if sched else None


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stop_reason: str = "epochs"


def fit(model: nn.Module, cfg: TrainConfig, updates: Callable[[torch.Generator], Iterator],
        val_loss: Callable[[], float], loss_fn: Callable = masked_mse,
        on_epoch: Callable[[dict], None] | None = None, progress: bool | None = None) -> History:
    """The training loop: per epoch the updates of `updates(generator)`, then
    `val_loss()`; schedules, early stopping, and the weights of the best validation
    epoch restored at the end. `on_epoch` gets each epoch's metrics (the MLflow logger)."""
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer, scheduler = make_optimizer(model, cfg)
    hist, best_state, stale = History(), None, 0
    bar = tqdm(range(cfg.epochs), desc="epochs", unit="epoch",
               disable=None if progress is None else not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        try:
            stats = train_epoch(model, updates(gen), optimizer, cfg.clip, loss_fn)
        except NumericalFault as fault:
            raise NumericalFault(
                f"training stopped: {fault} of epoch {epoch}. Likely cause: "
                + (f"clipping is off (clip=0) and lr={cfg.lr} is too high; set clip > 0 or "
                   "lower lr" if not cfg.clip else
                   f"lr={cfg.lr} is too high even with clip={cfg.clip}; lower lr")) from None
        val = val_loss()
        metrics = {"epoch": epoch, **stats, "val_loss": val,
                   "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0}
        hist.epochs.append(metrics)
        if on_epoch:
            on_epoch(metrics)
        bar.set_postfix(train=f"{stats['train_loss']:.4f}", val=f"{val:.4f}")
        if scheduler is not None:
            scheduler.step(val) if cfg.schedule == "plateau" else scheduler.step()
        if val < hist.best_val_loss:
            hist.best_val_loss, hist.best_epoch, stale = val, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if cfg.patience and stale >= cfg.patience:
            hist.stop_reason = f"no validation gain for {cfg.patience} epochs"
            break
        if cfg.target_loss and stats["train_loss"] <= cfg.target_loss:
            hist.stop_reason = f"training loss reached {cfg.target_loss}"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return hist


def fit_streams(model: nn.Module, streams: Streams, cfg: TrainConfig, lookback: int,
                on_epoch: Callable[[dict], None] | None = None,
                progress: bool | None = None) -> History:
    """Train on price streams: windows of `lookback` steps (full BPTT) or lanes
    (truncated BPTT), validated on the validation split in the same mode."""
    stateful = cfg.bptt == "truncated"
    if stateful:
        lanes_x, lanes_y = training_lanes(streams, cfg.lanes)

        def updates(gen):
            return tbptt_updates(model, lanes_x, lanes_y, cfg.k1, cfg.k2, cfg.input_noise)
    else:
        train_x, train_y = gather_windows(streams, streams.anchors(TRAIN, lookback), lookback)

        def updates(gen):
            return window_updates(model, train_x, train_y, cfg.batch_size, gen, cfg.input_noise)

    return fit(model, cfg, updates, lambda: split_loss(model, streams, VAL, stateful, lookback),
               on_epoch=on_epoch, progress=progress)
