"""Time to quality: windowed full BPTT (how the peer libraries train) against
stateful truncated BPTT, on realised volatility over the next 5 days, all bundled
tickers, each ticker its own stream.

    python -m bench.time_to_quality [--budget 60] [--seeds 0 1 2]

Windowed: lookback 64, stride 1, zero state per window, loss on the last step, so
each step is recomputed up to 64 times per epoch. Stateful: k1 = k2 = 25 over
64 lanes shared by the tickers, each step visited once per epoch. Same GRU (hidden 32),
Adam (lr 3e-3), clipping 1.0, and validation samples (those with 64 steps of
history).

The quality bar is the windowed model's best validation loss within its training-time
budget, relaxed by 1 % (bar = 1.01 * best). Each mode's time to the bar is the first
training time at which its own validation curve is at or below the bar; the stateful
model trains with the same budget, or until it reaches the bar. A seed where it never
does is reported and counted as failed. Only training time is counted: validation
passes are paused out, and run after the first update and then whenever the training
clock has grown by 5 % since the last one (the same in both modes), so either time to
the bar is resolved to about 5 % wherever it falls. Each seed prints the bar, both
times, best losses and update counts, and where each curve first drops below a few
levels above the bar. Result: median windowed time / median stateful time over the
seeds where stateful training reached the bar (target >= 4).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import pin_allocator, result
from data_loaders.sequences import TRAIN, VAL
from models.networks import build_model
from pipeline import tasks
from pipeline.core.config import build_config
from pipeline.core.trainer import (
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
RELAX = 1.01  # the bar: 1 % above the windowed model's best validation loss
EVAL_GROWTH = 1.05  # validate whenever the training clock has grown by 5 %
LEVELS = (1.5, 1.2, 1.1, 1.05, 1.02, 1.0)  # curve summary: first point below bar * level


def trainer(cfg, prep, stateful: bool):
    """The model and a factory of one epoch's (prediction, target) updates."""
    seed_everything(cfg.train.seed)
    spec = tasks.load("prices").network(cfg, prep)
    net = build_model(spec["model"], spec["n_in"], spec["n_out"])
    streams = prep.streams()
    if stateful:
        lanes_x, lanes_y = training_lanes(streams, cfg.train.lanes)
        return net, lambda: tbptt_updates(net, lanes_x, lanes_y, cfg.train.k1, cfg.train.k2)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    train_x, train_y = gather_windows(streams, streams.anchors(TRAIN, 64), 64)
    return net, lambda: window_updates(net, train_x, train_y, cfg.train.batch_size, gen)


def train_curve(cfg, prep, stateful: bool, budget: float, stop_below: float | None = None):
    """[(training seconds, updates, validation loss)] until the budget is spent (or the
    loss is at or below `stop_below`). The clock covers each update's forward pass,
    backward pass and step, and nothing else."""
    net, epoch = trainer(cfg, prep, stateful)
    opt, _ = make_optimizer(net, cfg.train)
    streams = prep.streams()
    updates, clock, due, done, curve = iter(()), 0.0, 0.0, 0, []
    while clock < budget:
        t0 = time.perf_counter()
        net.train()  # the update's forward pass runs in the generator, after validation
        pair = next(updates, None)
        if pair is None:  # the epoch's end: start the next one
            updates = epoch()
            pair = next(updates)
        train_epoch(net, iter([pair]), opt, cfg.train.clip)
        clock += time.perf_counter() - t0
        done += 1
        if clock >= due or clock >= budget:
            curve.append((clock, done, split_loss(net, streams, VAL, stateful, 64)))
            due = clock * EVAL_GROWTH
            if stop_below is not None and curve[-1][2] <= stop_below:
                break
    return curve


def first_below(curve, level: float):
    """The first (seconds, updates, loss) point at or below `level`, or None."""
    return next((p for p in curve if p[2] <= level), None)


def show_curves(curves: dict, bar: float) -> None:
    """Where each curve first drops to bar * level: seconds, updates and loss."""
    print(f"  {'level':>8}" + "".join(f"  {name:>30}" for name in curves))
    for level in LEVELS:
        cells = [first_below(curve, bar * level) for curve in curves.values()]
        print(f"  {bar * level:8.4f}" + "".join(
            f"  {p[0]:8.3f} s {p[1]:6d} upd {p[2]:.4f}" if p else f"  {'not reached':>30}"
            for p in cells))


def run_seed(seed: int, budget: float) -> tuple[float, float | None]:
    """One seed's times to the bar (windowed, stateful or None), printed with the curves."""
    cfg = build_config({**CONFIG, "seed": seed})
    prep = tasks.load("prices").prepare(cfg)
    windowed = train_curve(cfg, prep, stateful=False, budget=budget)
    bar = RELAX * min(loss for *_, loss in windowed)
    stateful = train_curve(cfg, prep, stateful=True, budget=budget, stop_below=bar)
    t_w, t_s = first_below(windowed, bar)[0], (first_below(stateful, bar) or [None])[0]
    for name, curve in (("windowed", windowed), ("stateful", stateful)):
        print(f"seed {seed} {name}: best {min(p[2] for p in curve):.4f}, {curve[-1][1]} "
              f"updates in {curve[-1][0]:.1f} s, {len(curve)} validation passes")
    print(f"seed {seed}: bar {bar:.4f}; windowed reaches it at {t_w:.3f} s, " + (
        f"stateful at {t_s:.3f} s (ratio {t_w / t_s:.2f})" if t_s is not None else
        f"stateful training did not reach the bar within {budget:g} s: best "
        f"{min(p[2] for p in stateful):.4f} vs bar {bar:.4f}"))
    show_curves({"windowed": windowed, "stateful": stateful}, bar)
    return t_w, t_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0,
                        help="training seconds for the windowed model (and at most for "
                             "the stateful one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    pin_allocator()
    times = [run_seed(seed, args.budget) for seed in args.seeds]
    reached = [(t_w, t_s) for t_w, t_s in times if t_s is not None]
    print(f"stateful training reached the bar in {len(reached)} of {len(times)} seeds"
          + (f"; median times windowed {statistics.median(t for t, _ in reached):.3f} s, "
             f"stateful {statistics.median(t for _, t in reached):.3f} s" if reached else
             "; no ratio (reported as 0)"))
    ratio = (statistics.median(t for t, _ in reached) / statistics.median(t for _, t in reached)
             if reached else 0.0)
    result("time_to_quality_ratio", ratio, ">=", 4)


if __name__ == "__main__":
    main()
