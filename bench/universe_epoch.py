"""Training on the universe: our truncated-BPTT epoch on the 300-stock preset
(`volatility-universe`: one lane per series, BPTT(25, 50), a gaussian head) against a
bare PyTorch loop doing the same work on the same lanes: the same GRU and head, Adam,
gradient clipping, the same TBPTT(k1, k2) windows, and one stateful validation pass.

    python -m bench.universe_epoch [--epochs 3]

Prints the load and feature time, throughput (lane-steps per second) of both sides,
alternating in one process, the median ratio ours / bare (target >= 0.90), and the
process's peak memory (target < 4 GB).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import mlflow
import torch

from bench.common import pin_allocator, result, tracked
from data_loaders.sequences import VAL
from models.heads import loss_fn
from models.networks import build_model
from pipeline import tasks
from pipeline.core.checkpoint import Checkpoints
from pipeline.core.config import build_config
from pipeline.core.trainer import fit, repackage, training_lanes


def ours(net, task, cfg, data, seed: int, checkpoints: Checkpoints) -> float:
    """One epoch of the pipeline's loop (fit: updates, validation, metrics logged to an
    open MLflow run, checkpoints)."""
    cfg.train.seed = seed
    goal = task.objective(cfg, data, net)
    t0 = time.perf_counter()
    fit(net, cfg.train, goal.updates, goal.validate, goal.loss_fn, progress=False,
        on_epoch=lambda m: mlflow.log_metrics({k: v for k, v in m.items() if k != "epoch"},
                                              step=seed), checkpoints=checkpoints)
    return time.perf_counter() - t0


def bare(net, lanes_x, lanes_y, val_x, val_y, val_mask, cfg, loss) -> float:
    """The loop a PyTorch user writes by hand: every k1 steps the loss on them,
    backpropagated through the last k2 steps from the state detached k2 steps back."""
    t0 = time.perf_counter()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    k1, k2, steps = cfg.train.k1, cfg.train.k2, lanes_x.shape[1]
    net.train()
    state, done = None, 0
    for end in range(k1, steps + k1, k1):
        end = min(end, steps)
        start = max(0, end - k2)
        resume = max(0, min(end + k1, steps) - k2) if end < steps else end  # the next start
        out_a, mid = net(lanes_x[:, start:resume], state) if resume > start else (None, state)
        out_b, last = net(lanes_x[:, resume:end], mid) if end > resume else (None, mid)
        out = out_b if out_a is None else out_a if out_b is None else torch.cat([out_a, out_b], 1)
        value = loss(out[:, done - start:], lanes_y[:, done:end])
        opt.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.clip)
        opt.step()
        state = repackage(mid if resume < end else last)  # detached (per layer; or None)
        done = end
    net.eval()
    with torch.no_grad():
        out, _ = net(val_x)
        loss(out[val_mask], val_y[val_mask]).item()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per side")
    args = parser.parse_args()
    pin_allocator()
    cfg = build_config({"preset": "volatility-universe", "epochs": 1, "patience": 0})
    task = tasks.load("prices")
    t0 = time.perf_counter()
    data = task.prepare(cfg)
    print(f"load and features: {len(data.names)} series in {time.perf_counter() - t0:.1f} s")
    streams = data.streams()
    lanes_x, lanes_y = training_lanes(streams, cfg.train.lanes)
    length = max(len(x) for x in streams.x)
    val_x = torch.zeros(len(streams.x), length, lanes_x.shape[2])
    val_y = torch.zeros(len(streams.x), length, lanes_y.shape[2])
    val_mask = torch.zeros(len(streams.x), length, dtype=torch.bool)
    for i, (x, y, split) in enumerate(zip(streams.x, streams.y, streams.split, strict=True)):
        val_x[i, :len(x)], val_y[i, :len(y)] = x, torch.nan_to_num(y)
        val_mask[i, :len(split)] = torch.as_tensor(split == VAL)
    spec = task.network(cfg, data)
    net = build_model(spec["model"], spec["n_in"], spec["n_out"])
    loss = loss_fn(cfg.task.loss, spec["quantiles"])
    work = lanes_x.shape[0] * lanes_x.shape[1]
    print(f"{lanes_x.shape[0]} lanes of {lanes_x.shape[1]} steps; GRU {cfg.model.layers} x "
          f"{cfg.model.hidden}, TBPTT({cfg.train.k1}, {cfg.train.k2}), Adam, clip "
          f"{cfg.train.clip}")
    with tracked() as ckpt:
        ratios = []
        for epoch in range(args.epochs + 1):  # the first of each side warms up
            t_ours = ours(net, task, cfg, data, epoch, ckpt)
            t_bare = bare(net, lanes_x, lanes_y, val_x, val_y, val_mask, cfg, loss)
            if epoch:
                ratios.append(t_bare / t_ours)
            print(f"epoch {epoch}{' (warm-up)' if not epoch else ''}: ours {work / t_ours:8.0f}"
                  f" lane-steps/s, bare {work / t_bare:8.0f}, ratio {t_bare / t_ours:.3f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"peak memory of this process: {peak:.2f} GB (target < 4)")
    result("universe_epoch_throughput_ratio", statistics.median(ratios), ">=", 0.90)


if __name__ == "__main__":
    main()
