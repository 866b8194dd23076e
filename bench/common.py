"""Shared by the benchmarks: pinned allocator settings, real data, the RESULT line."""

from __future__ import annotations

import os
import sys

# glibc's malloc swings small-LSTM timings by up to 1.8x between processes; pinning
# these makes every side of a ratio (and every run) use the same allocator behaviour.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "134217728",
             "MALLOC_ARENA_MAX": "2"}


def pin_allocator() -> None:
    """Re-exec this process with the pinned allocator settings unless they are set."""
    if any(os.environ.get(k) != v for k, v in ALLOCATOR.items()):
        os.environ.update(ALLOCATOR)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    print("allocator: " + " ".join(f"{k}={v}" for k, v in ALLOCATOR.items()) +
          f"; torch threads: {_threads()}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def result(name: str, value: float, op: str, target: float) -> None:
    """The last line of every benchmark."""
    print(f"RESULT {name} {value:.3f} target {op} {target:g}", flush=True)
