"""Data-parallel scaling: training throughput at 1 and 2 ranks under torchrun, one
thread each, the same global batch, for full BPTT (windows of 64 steps, LSTM hidden 32,
global batch 256) and truncated BPTT (the volatility preset's GRU, k1 25, k2 50, 16
lanes), on all bundled tickers.

    python -m bench.ddp_scaling [--epochs 3] [--repeats 2]

Each configuration runs `torchrun --standalone --nproc_per_node=N -m pipeline.train`
in a fresh process group, `repeats` times, the 1- and 2-rank runs alternated. The
time is the `train_seconds` metric rank 0 logs (the updates of an epoch, validation
excluded: every rank validates on all of validation); the first epoch is left out
(warm-up). Throughput: training samples (windows, or lane steps) per second. Result:
the median 2-rank throughput over the median 1-rank throughput, for full BPTT
(target >= 1.5 on 2 cores; 2.0 is perfect scaling).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ALLOCATOR, result
from pipeline.core.params import ROOT

MODES = {
    "full": ["--cell", "lstm", "--lookback", "64", "--batch_size", "256"],
    "truncated": ["--preset", "volatility-tbptt"],
}
COMMON = ["--hidden", "32", "--patience", "0", "--register", "false"]


def epoch_times(mode: str, ranks: int, epochs: int) -> list[float]:
    """train_seconds of every epoch but the first, from a fresh torchrun."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, **ALLOCATOR, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri,
               "PYTHONPATH": str(ROOT)}
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        subprocess.run([torchrun, "--standalone", f"--nproc_per_node={ranks}", "-m",
                        "pipeline.train", *MODES[mode], *COMMON, "--epochs", str(epochs),
                        "--checkpoint_dir", f"{tmp}/ckpt"], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = mlflow.MlflowClient(uri)
        run = client.search_runs([client.get_experiment_by_name("prices").experiment_id])[0]
        history = client.get_metric_history(run.info.run_id, "train_seconds")
        return [m.value for m in sorted(history, key=lambda m: m.step)][1:]


def samples(mode: str) -> int:
    """Training samples per epoch: windows (full) or lane steps with a target (truncated)."""
    from pipeline import tasks
    from pipeline.core.config import build_config
    from pipeline.core.trainer import gather_windows, training_lanes

    args = dict(zip(MODES[mode][::2], MODES[mode][1::2], strict=True))
    cfg = build_config({k.lstrip("-"): v for k, v in args.items()})
    data = tasks.load("prices").prepare(cfg)
    streams = data.streams()
    if mode == "full":
        from data_loaders.sequences import TRAIN

        return len(gather_windows(streams, streams.anchors(TRAIN, 64), 64)[0])
    _, lanes_y = training_lanes(streams, cfg.train.lanes)
    return int((~lanes_y.isnan().any(-1)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print("allocator: " + " ".join(f"{k}={v}" for k, v in ALLOCATOR.items())
          + "; one torch thread per rank (OMP_NUM_THREADS=1)")
    ratios = {}
    for mode in MODES:
        n = samples(mode)
        times = {1: [], 2: []}
        for _ in range(args.repeats):
            for ranks in (1, 2):
                times[ranks] += epoch_times(mode, ranks, args.epochs)
        rate = {r: n / statistics.median(t) for r, t in times.items()}
        ratios[mode] = rate[2] / rate[1]
        print(f"{mode} BPTT, {n:,} samples an epoch: 1 rank {rate[1]:,.0f}/s, 2 ranks "
              f"{rate[2]:,.0f}/s (x{ratios[mode]:.2f}); epoch seconds 1 rank "
              + ", ".join(f"{t:.2f}" for t in times[1]) + "; 2 ranks "
              + ", ".join(f"{t:.2f}" for t in times[2]), flush=True)
    result("ddp_scaling_ratio_2_vs_1_full", ratios["full"], ">=", 1.5)


if __name__ == "__main__":
    main()
