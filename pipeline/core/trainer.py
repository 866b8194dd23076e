"""The BPTT trainer: full BPTT over windows, truncated BPTT(k1, k2) over streams.

Both modes are generators of (prediction, target) pairs, one pair per update;
`train_epoch` turns any such generator into optimiser steps, so the loop
(loss, backward, clip, step) is written once. A `Cursor` says where an epoch
stands, so `fit` can checkpoint between any two updates and resume there.
"""

from __future__ import annotations

import copy
import math
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from data_loaders.sequences import TRAIN, VAL, Streams, pack_lanes, windows
from models.networks import forecasts, last_step
from pipeline.core import distributed
from pipeline.core.checkpoint import BEST, LATEST, Checkpoints, rng_states, set_rng_states
from pipeline.core.distributed import shard
from pipeline.core.signals import Interrupted, stop_signals

if TYPE_CHECKING:
    from pipeline.core.params import TrainParams


class NumericalFault(FloatingPointError):
    """A non-finite loss or gradient; training stops before the weights are touched."""


@dataclass
class Cursor:
    """Where training stands inside an epoch: what a mid-epoch checkpoint must keep."""

    update: int = 0  # updates done in this epoch
    state: Any = None  # truncated BPTT: the carried hidden state the next update starts from
    shuffle: torch.Tensor | None = None  # the shuffling generator's state at the epoch start
    loss_sum: float = 0.0
    norm_sum: float = 0.0
    count: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def map_state(state, fn):
    """fn applied to every tensor of a carried state (LSTM (h, c) tuples, layer lists)."""
    if state is None or isinstance(state, torch.Tensor):
        return None if state is None else fn(state)
    return type(state)(map_state(s, fn) for s in state)


def repackage(state):
    """Detach a carried state from its history, so the next update's backward pass
    stops here."""
    return map_state(state, torch.Tensor.detach)


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


def batches(n: int, batch_size: int, generator: torch.Generator,
            cursor: Cursor | None = None,
            lengths: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Shuffled minibatch indices over n samples, from the cursor's update on. The same on
    every rank of a data-parallel run (each keeps its `shard`), which skips a last
    minibatch of fewer samples than ranks. With `lengths` [n], samples of similar length
    go together (less padding): the shuffled order is sorted by length within groups of
    BUCKET_BATCHES minibatches, and the minibatches are shuffled."""
    order = torch.randperm(n, generator=generator)
    if lengths is not None:
        order = torch.cat([part[torch.argsort(lengths[part], stable=True)]
                           for part in order.split(batch_size * BUCKET_BATCHES)])
    groups = order.split(batch_size)
    if lengths is not None:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator)]
    start = cursor.update if cursor else 0
    for idx in groups[start:]:
        if len(idx) >= distributed.size():
            yield idx


BUCKET_BATCHES = 50  # minibatches sorted by length together: similar, and still shuffled


def window_updates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   generator: torch.Generator, noise: float = 0.0,
                   cursor: Cursor | None = None) -> Iterator:
    """Full BPTT: shuffled minibatches of windows [B, L, F], each started from a zero
    state; the loss is on the last step, and backpropagates to the first. (Noise is
    drawn for the whole minibatch before this rank's share is taken: the draws of one
    process.)"""
    for idx in batches(len(x), batch_size, generator, cursor):
        out, _ = model(shard(add_noise(x[idx], noise)))
        yield out[:, -1], shard(y[idx])


def utterance_updates(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor,
                      y: torch.Tensor, batch_size: int, generator: torch.Generator,
                      noise: float = 0.0, at_last: bool = True, cursor: Cursor | None = None):
    """Full BPTT over padded sequences x [N, T, F] (each from a zero state): shuffled
    batches, trimmed to their longest member. at_last: the output at each sequence's
    last step against y [N] (classification); otherwise every step against
    y [N, T, F], NaN (padding) carrying no loss."""
    for idx in batches(len(x), batch_size, generator, cursor):
        steps = int(lengths[idx].max())
        out, _ = model(shard(add_noise(x[idx, :steps], noise)))
        yield ((last_step(out, shard(lengths[idx])), shard(y[idx])) if at_last else
               (out, shard(y[idx, :steps])))


def tbptt_updates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k1: int, k2: int,
                  noise: float = 0.0, cursor: Cursor | None = None) -> Iterator:
    """Truncated BPTT(k1, k2) along lanes x [B, T, F], y [B, T, out].

    Every k1 steps, one update: the loss on those k1 new steps, backpropagated
    through the last k2 steps (k2 >= k1). The forward pass restarts from the
    detached state k2 steps back, so for k1 < k2 each step is computed k2/k1
    times, and no gradient reaches further back than k2 steps:

        lane  ... |<-------- k2 -------->|
                  s           s'         e        loss on [e-k1, e); the state at
                  |  carried  |  k1 new  |        s' (detached) starts the next
                                                  update's window [s', e+k1)

    With a cursor, the walk starts at update `cursor.update` from `cursor.state`, and
    leaves in `cursor.state` the state each next update starts from. In a data-parallel
    run each rank walks its `shard` of the lanes, its state its own.
    """
    if x.shape[0] < distributed.size():
        raise ValueError(f"lanes: {x.shape[0]} lanes for {distributed.size()} ranks; "
                         "give each rank at least one (more lanes, or fewer ranks)")
    cursor = cursor or Cursor()
    steps, y = x.shape[1], shard(y)
    ends = list(range(k1, steps + 1, k1)) + ([steps] if steps % k1 else [])
    starts = [max(0, e - k2) for e in ends]
    first = cursor.update
    state, prev_end = cursor.state, ends[first - 1] if first else 0
    for i in range(first, len(ends)):
        start, end = starts[i], ends[i]
        resume = starts[i + 1] if i + 1 < len(ends) else end
        xs = shard(add_noise(x[:, start:end], noise))
        out_a, mid = model(xs[:, : resume - start], state) if resume > start else (None, state)
        out_b, last = model(xs[:, resume - start:], mid) if end > resume else (None, mid)
        out = out_b if out_a is None else out_a if out_b is None else torch.cat([out_a, out_b], 1)
        state = cursor.state = repackage(mid if resume < end else last)
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
                clip: float, loss_fn: Callable = masked_mse, cursor: Cursor | None = None,
                stop: Callable[[], int] = lambda: 0) -> dict:
    """One optimiser step per (prediction, target) pair, counted and summed in the
    cursor. Returns the epoch's mean training loss and mean gradient norm before
    clipping. `stop()` (this process's caught signal) is asked at every update; a signal
    raises Interrupted, the cursor standing just after that update. In a data-parallel
    run, a signal on any rank stops every rank after the same update."""
    cursor = cursor or Cursor()
    model.train()
    ranks = distributed.size()
    for pred, target in updates:
        n = int((~torch.isnan(target)).sum()) if target.is_floating_point() else len(target)
        loss = loss_fn(pred, target) if n else pred.sum() * 0.0  # no target on this rank
        # the update's loss summed over its targets and the signals caught, over all ranks
        # in one collective (one process: this one's)
        loss_sum, n_all, signalled = distributed.sum_all(loss.item() * n, n, stop())
        if not math.isfinite(loss_sum) or n_all == 0:
            raise NumericalFault(f"non-finite loss ({loss_sum / n_all if n_all else 'no target'}"
                                 f") at update {cursor.update}")
        optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients; weighted by each rank's share of the targets,
        # the average is the gradient of the loss over the whole update
        (loss * (n * ranks / n_all) if ranks > 1 else loss).backward()
        # Clipping bounds the step when a rare window makes the gradient explode
        # (common in RNNs); the pre-clip norm is returned so it can be watched.
        norm = nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf)
        if not torch.isfinite(norm):
            raise NumericalFault(f"non-finite gradient norm ({norm.item()}) at update "
                                 f"{cursor.update}")
        optimizer.step()
        cursor.loss_sum += loss_sum
        cursor.norm_sum += norm.item()
        cursor.count += int(n_all)
        cursor.update += 1
        if signalled or (ranks == 1 and stop()):  # every rank stops after the same update
            raise Interrupted(stop() or signal.SIGTERM)
    if cursor.update == 0:
        raise ValueError("no training updates: the training split is empty "
                         "(too little data for lookback, lanes or val/test fractions)")
    return {"train_loss": cursor.loss_sum / cursor.count,
            "grad_norm": cursor.norm_sum / cursor.update}


def split_outputs(model: nn.Module, streams: Streams, which: int, stateful: bool,
                  lookback: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs at the anchors of one split of all series and the targets there
    (normalised units), the series forecast side by side (one pass for hundreds of series,
    not one each)."""
    anchors = streams.anchors(which, lookback)
    if not sum(len(a) for a in anchors):
        raise ValueError("the validation split has no samples with a full lookback")
    preds = forecasts(model, streams.x, anchors, stateful, lookback)
    targets = [y[torch.as_tensor(a)] for y, a in zip(streams.y, anchors, strict=True)]
    return torch.cat(preds), torch.cat(targets)


def split_loss(model: nn.Module, streams: Streams, which: int, stateful: bool,
               lookback: int, loss_fn: Callable = masked_mse) -> float:
    """The loss (MSE by default, normalised units) over one split of all series."""
    return loss_fn(*split_outputs(model, streams, which, stateful, lookback)).item()


def make_optimizer(model: nn.Module, cfg: TrainParams):
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
    stale: int = 0  # epochs since the best one, for early stopping
    stop_reason: str = ""  # why training stopped early; "epochs" once all have run


@dataclass
class Training:
    """Everything a training run changes as it goes, and its checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    hist: History = field(default_factory=History)
    best_weights: dict | None = None
    epoch: int = 0  # epochs done
    cursor: Cursor = field(default_factory=Cursor)

    def checkpoint(self) -> dict:
        return {"epoch": self.epoch, "cursor": asdict(self.cursor), "ranks": distributed.size(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "rng": rng_states(self.generator), "history": asdict(self.hist),
                "best_weights": self.best_weights}

    def restore(self, ckpt: dict) -> None:
        ranks = ckpt.get("ranks", 1)
        if ranks != distributed.size():  # a carried state belongs to one rank's lanes
            raise ValueError(f"resume_run_id: the run was trained on {ranks} rank(s); resume "
                             f"it on as many (torchrun --nproc_per_node={ranks}), not on "
                             f"{distributed.size()}")
        device = next(self.model.parameters()).device
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_states(ckpt["rng"], self.generator)
        self.hist, self.best_weights = History(**ckpt["history"]), ckpt["best_weights"]
        self.epoch, self.cursor = ckpt["epoch"], Cursor(**ckpt["cursor"])
        self.cursor.state = map_state(self.cursor.state, lambda t: t.to(device))

    def end_epoch(self, metrics: dict, cfg: TrainParams) -> bool:
        """Record an epoch; step the schedule; early stopping. True when it improved."""
        hist, val = self.hist, metrics["val_loss"]
        hist.epochs.append(metrics)
        if self.scheduler is not None:
            self.scheduler.step(val) if cfg.schedule == "plateau" else self.scheduler.step()
        improved = val < hist.best_val_loss
        if improved:
            hist.best_val_loss, hist.best_epoch, hist.stale = val, metrics["epoch"], 0
            self.best_weights = copy.deepcopy(self.model.state_dict())
        else:
            hist.stale += 1
        if cfg.patience and hist.stale >= cfg.patience:
            hist.stop_reason = f"no validation gain for {cfg.patience} epochs"
        elif cfg.target_loss and metrics["train_loss"] <= cfg.target_loss:
            hist.stop_reason = f"training loss reached {cfg.target_loss}"
        self.epoch, self.cursor = self.epoch + 1, Cursor()
        return improved


def fault_message(fault: NumericalFault, epoch: int, cfg: TrainParams) -> str:
    return (f"training stopped: {fault} of epoch {epoch}. Likely cause: "
            + (f"clipping is off (clip=0) and lr={cfg.lr} is too high; set clip > 0 or "
               "lower lr" if not cfg.clip else
               f"lr={cfg.lr} is too high even with clip={cfg.clip}; lower lr"))


class EpochProgress:
    """At a terminal a bar; elsewhere (a log file, CI) one line per epoch, so progress
    shows either way. `enabled=False` shows nothing."""

    def __init__(self, start: int, total: int, enabled: bool | None = None):
        import sys

        from tqdm.auto import tqdm

        tty = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.lines = total, enabled is None and not tty
        self.bar = tqdm(total=total, initial=start, desc="epochs", unit="epoch",
                        disable=not tty)

    def update(self, metrics: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(train=f"{metrics['train_loss']:.4f}",
                             val=f"{metrics['val_loss']:.4f}")
        if self.lines:
            shown = "  ".join(f"{k} {v:.5g}" for k, v in metrics.items()
                              if k.endswith(("_loss", "_accuracy")))
            print(f"epoch {metrics['epoch'] + 1}/{self.total}  {shown}  "
                  f"{metrics['epoch_seconds']:.1f} s", flush=True)

    def close(self) -> None:
        self.bar.close()


def fit(model: nn.Module, cfg: TrainParams,
        updates: Callable[[torch.Generator, Cursor], Iterator], validate: Callable[[], dict],
        loss_fn: Callable = masked_mse, on_epoch: Callable[[dict], None] | None = None,
        progress: bool | None = None, checkpoints: Checkpoints | None = None,
        resume: bool = False) -> History:
    """The training loop: per epoch the updates of `updates(generator, cursor)`, then
    `validate()` ({"val_loss": ..., and any other validation metrics}); schedules,
    early stopping on val_loss, and the weights of the best validation epoch restored
    at the end. `on_epoch` gets each epoch's metrics (the MLflow logger).

    With `checkpoints`: `latest` every `checkpoints.every` epochs and, on SIGTERM or
    SIGINT, between two updates (then Interrupted is raised); `best` whenever
    validation improves. `resume` starts from `latest`, and first hands `on_epoch`
    the epochs already done (a logger skips those it has). In a data-parallel run
    (pipeline/core/distributed.py) `model` is the DDP module, rank 0 alone writes, `latest`
    is also written before the first epoch, and a signal writes nothing mid-epoch: a
    resumed run replays the epoch from its start."""
    seed_everything(cfg.seed)
    net, parallel = distributed.unwrap(model), distributed.active()
    run = Training(net, *make_optimizer(net, cfg), torch.Generator().manual_seed(cfg.seed))
    if resume:
        run.restore(checkpoints.load(LATEST))
    writer = checkpoints if distributed.is_main() else None
    if parallel and writer and not resume:
        writer.save(LATEST, run.checkpoint())
    on_epoch = on_epoch or (lambda m: None)
    for metrics in run.hist.epochs:
        on_epoch(metrics)
    bar = EpochProgress(run.epoch, cfg.epochs, progress)
    with stop_signals(checkpoints is not None) as own_stop:
        stop = distributed.agreed(own_stop)  # at an epoch's end: the same on every rank
        for epoch in range(run.epoch, cfg.epochs):
            if run.hist.stop_reason:
                break
            _start_epoch(run)
            t0 = time.perf_counter()
            try:
                with distributed.guard():
                    stats = train_epoch(model, updates(run.generator, run.cursor),
                                        run.optimizer, cfg.clip, loss_fn, run.cursor, own_stop)
            except NumericalFault as fault:
                raise NumericalFault(fault_message(fault, epoch, cfg)) from None
            except Interrupted as stopped:
                path = (checkpoints.folder / LATEST if parallel else
                        writer.save(LATEST, run.checkpoint()) if writer else None)
                raise Interrupted(stopped.signum, path) from None
            trained = time.perf_counter()
            metrics = {"epoch": epoch, **stats, **validate(),
                       "lr": run.optimizer.param_groups[0]["lr"],
                       "train_seconds": trained - t0, "epoch_seconds": time.perf_counter() - t0}
            improved = run.end_epoch(metrics, cfg)
            on_epoch(metrics)
            bar.update(metrics)
            if checkpoints:
                _save_epoch(writer, run, improved, stop(), parallel)
    bar.close()
    if run.best_weights is not None:
        net.load_state_dict(run.best_weights)
    run.hist.stop_reason = run.hist.stop_reason or "epochs"
    return run.hist


def _start_epoch(run: Training) -> None:
    """A new epoch remembers the shuffling generator's state; one resumed mid-epoch
    rewinds it, so the epoch's shuffle is drawn again, the same."""
    if run.cursor.update == 0:
        run.cursor.shuffle = run.generator.get_state()
    else:
        run.generator.set_state(run.cursor.shuffle)


def _save_epoch(checkpoints: Checkpoints | None, run: Training, improved: bool, signum: int,
                every_epoch: bool) -> None:
    """At an epoch's end: `best` if it improved, `latest` when due (`every_epoch`: always),
    stopping or stopped. `checkpoints` None: a rank that does not write."""
    path = None
    if checkpoints and improved:
        checkpoints.save(BEST, {"epoch": run.hist.best_epoch, "val_loss": run.hist.best_val_loss,
                                "model": run.best_weights})
    if checkpoints and (checkpoints.due(run.epoch) or every_epoch or signum
                        or run.hist.stop_reason):
        path = checkpoints.save(LATEST, run.checkpoint())
    if signum:
        raise Interrupted(signum, path)


def stream_objective(model: nn.Module, streams: Streams, cfg: TrainParams, lookback: int,
                     loss_fn: Callable = masked_mse):
    """Price streams: `updates` over windows of `lookback` steps (full BPTT) or over
    lanes (truncated BPTT), and `validate`, the validation loss in the same mode."""
    stateful = cfg.bptt == "truncated"
    if stateful:
        lanes_x, lanes_y = training_lanes(streams, cfg.lanes)

        def updates(gen, cursor):
            return tbptt_updates(model, lanes_x, lanes_y, cfg.k1, cfg.k2, cfg.input_noise,
                                 cursor)
    else:
        train_x, train_y = gather_windows(streams, streams.anchors(TRAIN, lookback), lookback)

        def updates(gen, cursor):
            return window_updates(model, train_x, train_y, cfg.batch_size, gen,
                                  cfg.input_noise, cursor)

    def validate() -> dict:
        return {"val_loss": split_loss(model, streams, VAL, stateful, lookback, loss_fn)}

    return updates, validate


def fit_streams(model: nn.Module, streams: Streams, cfg: TrainParams, lookback: int,
                on_epoch: Callable[[dict], None] | None = None, progress: bool | None = None,
                checkpoints: Checkpoints | None = None, resume: bool = False) -> History:
    """Train on price streams (see `stream_objective`)."""
    updates, validate = stream_objective(model, streams, cfg, lookback)
    return fit(model, cfg, updates, validate, on_epoch=on_epoch, progress=progress,
               checkpoints=checkpoints, resume=resume)
