"""Training on the universe: our truncated-BPTT epoch on the 300-stock preset
(`volatility-universe`: one lane per series, BPTT(25, 50), a gaussian head) against a
bare PyTorch loop doing the same work on the same lanes: the same GRU and head, Adam,
gradient clipping, the same TBPTT(k1, k2) windows, and one stateful validation pass.

    python -m bench.universe_epoch [--epochs 5]

Prints the load and feature time, throughput (lane-steps per second) of both sides,
alternating in one process, the median ratio ours / bare (target >= 0.90), and the
peak memory of the pipeline's side, measured before the bare loop's tensors exist
(target < 4 GB).
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


def ours(net, goal, cfg, seed: int, checkpoints: Checkpoints) -> float:
    """One epoch of the pipeline's loop (fit: updates, validation, metrics logged to an
    open MLflow run, checkpoints) on the task's objective, built once as a run builds
    it for all its epochs (its lanes and validation streams)."""
    cfg.train.seed = seed
    seen = {}

    def on_epoch(m):
        seen.update(m)
        mlflow.log_metrics({k: v for k, v in m.items() if k != "epoch"}, step=seed)

    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    fit(net, cfg.train, goal.updates, goal.validate, goal.loss_fn, progress=False,
        on_epoch=on_epoch, checkpoints=checkpoints)
    took = time.perf_counter() - t0
    print(f"  ours: updates {seen['train_seconds']:.2f} s, validation "
          f"{seen['epoch_seconds'] - seen['train_seconds']:.2f} s, the rest "
          f"{took - seen['epoch_seconds']:.2f} s; {kernel(r0)}")
    return took


def bare(net, lanes_x, lanes_y, val_x, val_y, val_mask, cfg, loss) -> float:
    """The loop a PyTorch user writes by hand: every k1 steps the loss on them,
    backpropagated through the last k2 steps from the state detached k2 steps back."""
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
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
    trained = time.perf_counter()
    net.eval()
    with torch.no_grad():
        out, _ = net(val_x)
        loss(out[val_mask], val_y[val_mask]).item()
    took = time.perf_counter() - t0
    print(f"  bare: updates {trained - t0:.2f} s, validation {took - (trained - t0):.2f} s; "
          f"{kernel(r0)}")
    return took


def bare_tensors(streams, cfg):
    """The bare loop's inputs: the training lanes, and every series' whole stream padded
    to the longest, with a mask of the validation steps."""
    lanes_x, lanes_y = training_lanes(streams, cfg.train.lanes)
    length = max(len(x) for x in streams.x)
    val_x = torch.zeros(len(streams.x), length, lanes_x.shape[2])
    val_y = torch.zeros(len(streams.x), length, lanes_y.shape[2])
    val_mask = torch.zeros(len(streams.x), length, dtype=torch.bool)
    for i, (x, y, split) in enumerate(zip(streams.x, streams.y, streams.split, strict=True)):
        val_x[i, :len(x)], val_y[i, :len(y)] = x, torch.nan_to_num(y)
        val_mask[i, :len(split)] = torch.as_tensor(split == VAL)
    return lanes_x, lanes_y, val_x, val_y, val_mask


def kernel(before) -> str:
    """Time in the kernel and page faults since `before` (fresh memory from the kernel
    costs both: the allocator's state is a source of spread between the sides)."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return (f"kernel {now.ru_stime - before.ru_stime:.1f} s, "
            f"{now.ru_minflt - before.ru_minflt} page faults")


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5,
                        help="timed epochs per side (the median ratio is kept)")
    args = parser.parse_args()
    # Pinned at 128 KiB, glibc's mmap threshold sends the updates' buffers (1-12 MB) to
    # fresh pages on some epochs and not others, as the heap's history allows: up to
    # 2 million page faults and a quarter more time per epoch, on either side. Pinned
    # at glibc's own ceiling (32 MiB), neither side faults, as with the defaults a
    # user runs (docs/benchmarks.md).
    pin_allocator(MALLOC_MMAP_THRESHOLD_=str(32 * 2 ** 20))
    cfg = build_config({"preset": "volatility-universe", "epochs": 1, "patience": 0})
    task = tasks.load("prices")
    t0 = time.perf_counter()
    data = task.prepare(cfg)
    print(f"load and features: {len(data.names)} series in {time.perf_counter() - t0:.1f} s")
    spec = task.network(cfg, data)
    net = build_model(spec["model"], spec["n_in"], spec["n_out"])
    loss = loss_fn(cfg.task.loss, spec["quantiles"])
    print(f"GRU {cfg.model.layers} x {cfg.model.hidden}, TBPTT({cfg.train.k1}, "
          f"{cfg.train.k2}), Adam, clip {cfg.train.clip}")
    goal = task.objective(cfg, data, net)
    with tracked() as ckpt:
        t_ours = ours(net, goal, cfg, 0, ckpt)  # warm-up, and the pipeline's own peak
        print(f"peak memory of the pipeline's side (load, features, one epoch): {peak_gb():.2f}"
              " GB (target < 4)")
        bare_data = bare_tensors(data.streams(), cfg)
        work = bare_data[0].shape[0] * bare_data[0].shape[1]
        print(f"{bare_data[0].shape[0]} lanes of {bare_data[0].shape[1]} steps")
        ratios = []
        for epoch in range(args.epochs + 1):  # epoch 0 warms each side up
            t_ours = ours(net, goal, cfg, epoch, ckpt) if epoch else t_ours
            t_bare = bare(net, *bare_data, cfg, loss)
            if epoch:
                ratios.append(t_bare / t_ours)
            print(f"epoch {epoch}{' (warm-up)' if not epoch else ''}: ours {work / t_ours:8.0f}"
                  f" lane-steps/s, bare {work / t_bare:8.0f}, ratio {t_bare / t_ours:.3f}")
    print(f"peak memory of this process (both sides' data): {peak_gb():.2f} GB")
    result("universe_epoch_throughput_ratio", statistics.median(ratios), ">=", 0.90)


if __name__ == "__main__":
    main()
