"""Speech training throughput: our trainer (fit() on utterance batches, per-epoch MLflow
logging included) against a bare PyTorch loop on the same padded batches (same GRU
and head, Adam, clipping, batches trimmed to their longest utterance, the loss at
each utterance's last frame, one validation pass per epoch).

    python -m bench.speech_trainer_overhead [--epochs 6]

Bundled FSDD subset (800 files, features from a temporary cache). Result: median
over alternated epochs of bare time / our time (target >= 0.90).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import mlflow
import torch
from torch import nn

from bench.common import pin_allocator, result
from data_loaders.sequences import TRAIN, VAL
from models.networks import build_model, last_step, logits
from pipeline import tasks
from pipeline.core.config import build_config
from pipeline.core.trainer import fit, utterance_updates


def ours(net, cfg, train, val, epoch: int) -> float:
    (xt, lt, yt), (xv, lv, yv) = train, val
    cfg.train.seed = epoch
    t0 = time.perf_counter()
    fit(net, cfg.train,
        lambda gen, cursor: utterance_updates(net, xt, lt, yt, cfg.train.batch_size, gen,
                                              cursor=cursor),
        lambda: {"val_loss": nn.functional.cross_entropy(logits(net, xv, lv), yv).item()},
        nn.functional.cross_entropy,
        on_epoch=lambda m: mlflow.log_metrics({k: v for k, v in m.items() if k != "epoch"},
                                              step=epoch), progress=False)
    return time.perf_counter() - t0


def bare(net, train, val, epoch: int, batch: int) -> float:
    (xt, lt, yt), (xv, lv, yv) = train, val
    t0 = time.perf_counter()
    torch.manual_seed(epoch)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for idx in torch.randperm(len(xt)).split(batch):
        out, _ = net(xt[idx, : int(lt[idx].max())])
        loss = nn.functional.cross_entropy(last_step(out, lt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    net.eval()
    with torch.no_grad():
        nn.functional.cross_entropy(logits(net, xv, lv), yv).item()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per side")
    args = parser.parse_args()
    pin_allocator()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config({"task": "speech-classify", "cell": "gru", "hidden": 64,
                            "epochs": 1, "patience": 0, "feature_cache": f"{tmp}/cache"})
        task = tasks.load(cfg.task_name)
        data = task.prepare(cfg)
        train, val = data.padded(TRAIN), data.padded(VAL)
        spec = task.network(cfg, data)
        net = build_model(spec["model"], spec["n_in"], spec["n_out"])
        print(f"{len(train[0])} training utterances (padded to {train[0].shape[1]} frames), "
              f"GRU hidden 64, batch {cfg.train.batch_size}, Adam, clip 1.0")
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/bench.db")
        mlflow.set_experiment("bench")
        with mlflow.start_run():
            ours(net, cfg, train, val, 0)  # warm-up
            bare(net, train, val, 0, cfg.train.batch_size)
            ratios = []
            for epoch in range(args.epochs):
                t_ours = ours(net, cfg, train, val, epoch)
                t_bare = bare(net, train, val, epoch, cfg.train.batch_size)
                ratios.append(t_bare / t_ours)
                n = len(train[0])
                print(f"epoch {epoch}: ours {n / t_ours:7.0f} utterances/s, "
                      f"bare {n / t_bare:7.0f} utterances/s, ratio {ratios[-1]:.3f}")
    result("speech_trainer_throughput_ratio", statistics.median(ratios), ">=", 0.90)


if __name__ == "__main__":
    main()
