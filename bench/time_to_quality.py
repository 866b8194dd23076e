"""Time to quality: windowed full BPTT (how the peer libraries train) against
stateful truncated BPTT, on realised volatility over the next 5 days, all bundled
tickers, each ticker its own stream.

    python -m bench.time_to_quality [--budget 60] [--seeds 0 1 2]

Windowed: lookback 64, stride 1, zero state per window, loss on the last step, so
each step is recomputed up to 64 times per epoch. Stateful: k1 = k2 = 25 over
64 lanes shared by the tickers, each step visited once per epoch. Same GRU (hidden 32),
Adam (lr 3e-3), clipping 1.0, and validation samples (those with 64 steps of
history). The quality bar is the validation loss that closes 80 % of the gap
between the training-mean baseline and the best loss the windowed model reaches
within its time budget. Only training time is counted (validation passes,
after each of the first 50 updates, then every 5 up to 200, then every 40, in
both modes, are paused out). Result: median over seeds of windowed time / stateful time
(target >= 4).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from bench.common import pin_allocator, result
from data_loaders.sequences import TRAIN, VAL
from models.networks import build_model
from pipeline import tasks
from pipeline.config import build_config
from pipeline.trainer import (
    gather_windows,
    make_optimizer,
    seed_everything,
    split_loss,
    tbptt_updates,
    train_epoch,
    training_lanes,
    window_updates,
)

CONFIG = {"target": "volatility", "horizon": 5, "cell": "gru", "hidden": 32, "lookback": 64,
          "batch_size": 64, "lanes": 64, "k1": 25, "k2": 25, "lr": 0.003, "clip": 1.0}


def eval_every(updates_done: int) -> int:
    """Updates between validation passes, the same for both modes: often at first,
    where the curves fall fastest, then sparser (a windowed pass costs ~0.3 s)."""
    return 1 if updates_done < 50 else 5 if updates_done < 200 else 40


def train_curve(cfg, prep, stateful: bool, budget: float, stop_below: float | None = None):
    """[(training seconds, validation loss)] until the budget is spent (or the loss is
    below `stop_below`)."""
    seed_everything(cfg.train.seed)
    spec = tasks.load("prices").network(cfg, prep)
    net = build_model(spec["model"], spec["n_in"], spec["n_out"])
    streams = prep.streams()
    gen = torch.Generator().manual_seed(cfg.train.seed)
    opt, _ = make_optimizer(net, cfg.train)
    if stateful:
        lanes_x, lanes_y = training_lanes(streams, cfg.train.lanes)
    else:
        train_x, train_y = gather_windows(streams, streams.anchors(TRAIN, 64), 64)
    clock, curve, done = 0.0, [], 0
    while clock < budget:
        updates = iter(tbptt_updates(net, lanes_x, lanes_y, cfg.train.k1, cfg.train.k2)
                       if stateful else
                       window_updates(net, train_x, train_y, cfg.train.batch_size, gen))
        while clock < budget:
            first = next(updates, None)  # the epoch's end, or the next chunk of updates
            if first is None:
                break
            t0 = time.perf_counter()
            chunk = itertools.chain([first], itertools.islice(updates, eval_every(done) - 1))
            done += eval_every(done)
            train_epoch(net, chunk, opt, cfg.train.clip)
            clock += time.perf_counter() - t0
            curve.append((clock, split_loss(net, streams, VAL, stateful, 64)))
            if stop_below is not None and curve[-1][1] <= stop_below:
                return curve
    return curve


def first_time_below(curve, level: float) -> float | None:
    return next((t for t, loss in curve if loss <= level), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0,
                        help="training seconds for the windowed model (and at most for "
                             "the stateful one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    pin_allocator()
    ratios = []
    for seed in args.seeds:
        cfg = build_config({**CONFIG, "seed": seed})
        prep = tasks.load("prices").prepare(cfg)
        streams = prep.streams()
        baseline = split_loss_of_zero(streams)  # the training mean is 0 once normalised
        windowed = train_curve(cfg, prep, stateful=False, budget=args.budget)
        best = min(loss for _, loss in windowed)
        bar = baseline - 0.8 * (baseline - best)
        stateful = train_curve(cfg, prep, stateful=True, budget=args.budget, stop_below=bar)
        t_w, t_s = first_time_below(windowed, bar), first_time_below(stateful, bar)
        print(f"seed {seed}: train-mean val loss {baseline:.4f}, windowed best {best:.4f}, "
              f"bar {bar:.4f}; windowed reaches it at {t_w:.3f} s, stateful at "
              + (f"{t_s:.3f} s" if t_s is not None
                 else f"never within {args.budget:.0f} s"))
        ratios.append(t_w / t_s if t_s else 0.0)
    result("time_to_quality_ratio", statistics.median(ratios), ">=", 4)


def split_loss_of_zero(streams) -> float:
    ys = [y[a] for y, a in zip(streams.y, streams.anchors(VAL, 64), strict=True)]
    return torch.cat(ys).pow(2).mean().item()


if __name__ == "__main__":
    main()
