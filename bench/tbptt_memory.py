"""TBPTT memory: the peak memory of training is set by k2, not by the stream length.

    python -m bench.tbptt_memory

Each configuration trains in a fresh child process (same allocator settings)
that reports how far its peak RSS rose above the RSS it had before training:
- truncated BPTT, k1 = k2 = 100, 16 lanes, on a 20,000- and a 200,000-step stream;
- full BPTT on 16 windows of 1,000 and of 10,000 steps (one update each).
The stream is the bundled tickers' real features, end to end, repeated to length.
Prints both ratios; the result is truncated 200k / 20k (target <= 1.10).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np
import torch

from bench.common import pin_allocator, result
from models.networks import RecurrentRegressor
from pipeline import tasks
from pipeline.core.config import build_config
from pipeline.core.trainer import tbptt_updates, train_epoch, window_updates

HIDDEN, LANES, K2, WINDOWS = 64, 16, 100, 16


def real_stream(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    prep = tasks.load("prices").prepare(build_config({"target": "volatility", "horizon": 5}))
    x = np.concatenate([prep.x_norm.transform(x) for x in prep.x])
    y = np.nan_to_num(np.concatenate([prep.y_norm.transform(y) for y in prep.y]))
    reps = -(-steps // len(x))
    return (torch.as_tensor(np.tile(x, (reps, 1))[:steps]),
            torch.as_tensor(np.tile(y, (reps, 1))[:steps]))


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(mode: str, length: int) -> None:
    torch.manual_seed(0)
    net = RecurrentRegressor(3, 1, cell="lstm", hidden=HIDDEN)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    if mode == "truncated":
        x, y = real_stream(length)
        steps = length // LANES
        xl, yl = x[: steps * LANES].reshape(LANES, steps, -1), y[: steps * LANES].reshape(
            LANES, steps, -1)  # [T, F] -> [B, T/B, F]
        updates = lambda: tbptt_updates(net, xl, yl, K2, K2)  # noqa: E731
    else:
        x, y = real_stream(length + WINDOWS)
        xw = torch.stack([x[i:i + length] for i in range(WINDOWS)])  # [16, L, F]
        yw = torch.stack([y[i + length - 1] for i in range(WINDOWS)])
        updates = lambda: window_updates(net, xw, yw, WINDOWS, torch.Generator())  # noqa: E731
    train_epoch(net, updates(), opt, clip=1.0)  # warm-up: allocator pools, lazy init
    before = rss_kib()
    train_epoch(net, updates(), opt, clip=1.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rise_mib": max(peak - before, 0) / 1024, "rss_mib": peak / 1024}))


def measure(mode: str, length: int) -> float:
    out = subprocess.run([sys.executable, "-m", "bench.tbptt_memory", "--child", mode,
                          str(length)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{mode:9s} {length:>7,d} steps: peak rise {got['peak_rise_mib']:8.1f} MiB "
          f"(peak RSS {got['rss_mib']:.0f} MiB)")
    return got["peak_rise_mib"]


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2], int(sys.argv[3]))
    pin_allocator()
    print(f"LSTM hidden {HIDDEN}; truncated: {LANES} lanes, k1 = k2 = {K2}; "
          f"full: {WINDOWS} windows, one update")
    t20, t200 = measure("truncated", 20_000), measure("truncated", 200_000)
    f1, f10 = measure("full", 1_000), measure("full", 10_000)
    print(f"full BPTT, windows 10,000 / 1,000: peak rise x{f10 / max(f1, 1e-9):.2f} (grows)")
    print(f"truncated BPTT, stream 200,000 / 20,000: peak rise x{t200 / max(t20, 1e-9):.2f}")
    result("tbptt_memory_ratio_200k_vs_20k", t200 / max(t20, 1e-9), "<=", 1.10)


if __name__ == "__main__":
    main()
