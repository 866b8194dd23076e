"""Shared by the benchmarks: pinned allocator settings, real data, the RESULT line."""

from __future__ import annotations

import contextlib
import os
import sys

# glibc's malloc swings small-LSTM timings by up to 1.8x between processes; pinning
# these makes every side of a ratio (and every run) use the same allocator behaviour.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "134217728",
             "MALLOC_ARENA_MAX": "2"}


def pin_allocator(**overrides: str) -> None:
    """Re-exec this process with the pinned allocator settings (ALLOCATOR, then
    `overrides`) unless they are set."""
    pinned = {**ALLOCATOR, **overrides}
    if any(os.environ.get(k) != v for k, v in pinned.items()):
        os.environ.update(pinned)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    print("allocator: " + " ".join(f"{k}={v}" for k, v in pinned.items()) +
          f"; torch threads: {_threads()}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


@contextlib.contextmanager
def tracked():
    """A throwaway SQLite store with an open run, and a checkpoint folder: where the
    pipeline's loop logs and writes while a benchmark times it."""
    import tempfile

    import mlflow

    from pipeline.core.checkpoint import Checkpoints

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/bench.db")
        mlflow.set_experiment("bench")
        with mlflow.start_run():
            yield Checkpoints(f"{tmp}/checkpoints")


def result(name: str, value: float, op: str, target: float) -> None:
    """The last line of every benchmark."""
    print(f"RESULT {name} {value:.3f} target {op} {target:g}", flush=True)


def registered_model(tmp: str, **overrides) -> str:
    """Train (1 epoch: speed does not depend on the weights) and register a price model
    in a SQLite store under `tmp`; returns its models:/ URI."""
    import os

    import mlflow

    from pipeline.main import main as train_main

    os.makedirs(tmp, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    os.chdir(tmp)
    args = {"epochs": 1, "registered_model": "bench", **overrides}
    train_main([f"--{k}={v}" for k, v in args.items()])
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    return f"models:/{args['registered_model']}@champion"


def long_history(steps: int):
    """One long real price history: MSFT, then GSPC scaled to continue from MSFT's last
    close (13,014 days; the join is one ordinary-looking day), dated anew by business
    day from MSFT's first while pandas' calendar lasts (to 2262) and undated beyond.
    Longer histories repeat those days' moves (each day's log return, less the mean so
    that every repeat ends where it began, its high/low range and volume)."""
    import numpy as np
    import pandas as pd

    from data_loaders.prices import read_price_csv
    from pipeline.core.params import ROOT

    msft, _ = read_price_csv(ROOT / "data/prices/MSFT.csv")
    gspc, _ = read_price_csv(ROOT / "data/prices/GSPC.csv")
    scale = msft["adj_close"].iloc[-1] / gspc["adj_close"].iloc[0]
    gspc = gspc.assign(**{c: gspc[c] * scale for c in ("open", "high", "low", "close",
                                                         "adj_close")})
    both = pd.concat([msft, gspc])
    close = both["adj_close"].to_numpy()
    moves = np.diff(np.log(close))
    if steps > len(both):
        moves = moves - moves.mean()
    idx = np.arange(steps - 1) % len(moves)
    adj = close[0] * np.exp(np.concatenate([[0.0], np.cumsum(moves[idx])]))
    day = np.concatenate([[0], idx + 1])  # the real day each step copies its range from
    frame = pd.DataFrame({c: adj * (both[c].to_numpy() / close)[day]
                          for c in ("open", "high", "low", "close")})
    frame["adj_close"], frame["volume"] = adj, both["volume"].to_numpy()[day]
    if steps < 60_000:
        frame.index = pd.bdate_range(both.index[0], periods=steps, name="date")
    return frame
