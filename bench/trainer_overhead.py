"""Trainer overhead: our full-BPTT epoch (fit_streams(), MLflow logging and a checkpoint
per epoch included) against a bare PyTorch loop doing the same work on the same
windows: the same nn.LSTM and head, Adam, gradient clipping, and one validation
pass per epoch.

    python -m bench.trainer_overhead [--epochs 10]

Prints throughput (training windows per second) for both, alternating them in
one process, and the median ratio ours / bare (target >= 0.90).
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlflow
import torch
from torch import nn

from bench.common import pin_allocator, result, tracked
from data_loaders.sequences import TRAIN, VAL
from models.networks import build_model
from pipeline import tasks
from pipeline.core.checkpoint import Checkpoints
from pipeline.core.config import build_config
from pipeline.core.trainer import fit_streams, gather_windows

CONFIG = {"cell": "lstm", "hidden": 32, "lookback": 64, "batch_size": 64, "epochs": 1,
          "patience": 0}


def ours(net, prep, cfg, seed: int, checkpoints: Checkpoints) -> float:
    """One epoch of fit_streams() inside an open run, logging its metrics and writing its
    checkpoints as the pipeline does (opening and closing the run is a per-run cost, not
    a per-epoch one)."""
    cfg.train.seed = seed
    t0 = time.perf_counter()
    fit_streams(net, prep.streams(), cfg.train, cfg.task.lookback,
        on_epoch=lambda m: mlflow.log_metrics({k: v for k, v in m.items() if k != "epoch"},
                                              step=seed), progress=False,
        checkpoints=checkpoints)
    return time.perf_counter() - t0


def bare(net, train_x, train_y, val_x, val_y, seed: int, batch: int) -> float:
    """The loop a PyTorch user writes by hand."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for idx in torch.randperm(len(train_x)).split(batch):
        out, _ = net(train_x[idx])
        loss = nn.functional.mse_loss(out[:, -1], train_y[idx])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    net.eval()
    with torch.no_grad():
        nn.functional.mse_loss(net(val_x)[0][:, -1], val_y).item()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description="trainer overhead vs a bare PyTorch loop")
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs per side")
    args = parser.parse_args()
    pin_allocator()
    cfg = build_config(CONFIG)
    prep = tasks.load("prices").prepare(cfg)
    streams = prep.streams()
    train_x, train_y = gather_windows(streams, streams.anchors(TRAIN, 64), 64)
    val_x, val_y = gather_windows(streams, streams.anchors(VAL, 64), 64)
    spec = tasks.load("prices").network(cfg, prep)
    net = build_model(spec["model"], spec["n_in"], spec["n_out"])
    print(f"{len(train_x)} training windows of 64 steps, {len(val_x)} validation windows; "
          f"LSTM hidden 32, batch 64, Adam, clip 1.0")
    with tracked() as ckpt:
        ours(net, prep, cfg, 0, ckpt)  # warm-up: first-call costs (MLflow tables, allocator)
        bare(net, train_x, train_y, val_x, val_y, 0, 64)
        ratios = []
        for epoch in range(args.epochs):
            t_ours = ours(net, prep, cfg, epoch, ckpt)
            t_bare = bare(net, train_x, train_y, val_x, val_y, epoch, 64)
            ratios.append(t_bare / t_ours)
            print(f"epoch {epoch}: ours {len(train_x) / t_ours:8.0f} windows/s, "
                  f"bare {len(train_x) / t_bare:8.0f} windows/s, ratio {ratios[-1]:.3f}")
    result("trainer_overhead_throughput_ratio", statistics.median(ratios), ">=", 0.90)


if __name__ == "__main__":
    main()
