"""Sequence tools shared by every source: the normaliser, chronological splits,
windows for full BPTT, lanes for truncated BPTT, and the `Streams` training reads.

Only NumPy is imported here (torch tensors are handled through their methods), so
the command line can import the loaders without paying for torch or pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch

TRAIN, VAL, TEST, UNUSED = 0, 1, 2, -1
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}


@dataclass
class Normaliser:
    """Per-column standardisation, fit on training rows only (NaN rows ignored)."""

    mean_: np.ndarray | None = None
    std_: np.ndarray | None = None

    def fit(self, values: np.ndarray) -> Normaliser:
        values = np.asarray(values, np.float64)
        self.mean_ = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        self.std_ = np.where(std > 1e-12, std, 1.0)  # a constant column stays as it is
        return self

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean_) / self.std_).astype(np.float32)

    def inverse_transform(self, values: np.ndarray) -> np.ndarray:
        return (values * self.std_ + self.mean_).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean_.tolist(), "std": self.std_.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Normaliser:
        return cls(np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64))


def date_cutoffs(all_dates: list[np.ndarray], val_frac: float,
                 test_frac: float) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Validation and test start dates: the quantiles of the union of all series'
    dates, so every series is cut on the same calendar day (no look-ahead across
    series)."""
    import pandas as pd

    dates = np.unique(np.concatenate(all_dates))
    n = len(dates)
    val_start = dates[int(np.floor(n * (1 - val_frac - test_frac)))]
    test_start = dates[int(np.floor(n * (1 - test_frac)))]
    return pd.Timestamp(val_start), pd.Timestamp(test_start)


def walk_forward_cutoffs(all_dates: list[np.ndarray], val_frac: float, test_frac: float,
                         fold: int, folds: int) -> tuple[pd.Timestamp, pd.Timestamp,
                                                         pd.Timestamp | None]:
    """Validation start, test start and test end (exclusive; None: the last date) of
    block `fold` (1..folds) of a walk-forward backtest: the latest `test_frac` of the
    calendar in `folds` consecutive blocks; each block's validation is the `val_frac` of
    the calendar just before it, and its training everything earlier (an expanding
    window). Days from the test end on are not used by that fold."""
    import pandas as pd

    dates = np.unique(np.concatenate(all_dates))
    n = len(dates)
    first = n * (1 - test_frac)
    start = int(np.floor(first + (fold - 1) * n * test_frac / folds))
    end = int(np.floor(first + fold * n * test_frac / folds))
    val = start - int(np.floor(n * val_frac))
    if val <= 0 or end <= start:
        raise ValueError(f"fold {fold} of {folds}: too few days ({n}) for val_frac={val_frac} "
                         f"and test_frac={test_frac}")
    return (pd.Timestamp(dates[val]), pd.Timestamp(dates[start]),
            pd.Timestamp(dates[end]) if end < n else None)


def yearly_cutoffs(val_start: str, test_start: str, fold: int) -> tuple[pd.Timestamp, ...]:
    """Validation start, test start and test end (exclusive) of block `fold` (1..) of a
    yearly walk-forward backtest: block 1 tests from test_start to the end of its year,
    block k the calendar year k-1 later; each is validated on the days just before it, as
    many calendar days as val_start..test_start, and trained on everything earlier."""
    import pandas as pd

    first = pd.Timestamp(test_start)
    start = first if fold == 1 else pd.Timestamp(first.year + fold - 1, 1, 1)
    return start - (first - pd.Timestamp(val_start)), start, pd.Timestamp(first.year + fold, 1, 1)


def assign_splits(dates: np.ndarray, horizon: int, has_target: np.ndarray,
                  cutoffs: tuple[pd.Timestamp, pd.Timestamp]) -> np.ndarray:
    """Split of the sample anchored at each step: the split of its first target
    day t+1. Samples whose targets reach into the next split are purged (UNUSED),
    so no training target overlaps validation and none of validation's overlaps
    test."""
    val_start, test_start = cutoffs
    day_split = np.where(dates >= np.datetime64(test_start), TEST,
                         np.where(dates >= np.datetime64(val_start), VAL, TRAIN))
    split = np.full(len(dates), UNUSED, np.int8)
    n = len(dates)
    first = np.arange(n) + 1
    last = np.arange(n) + horizon
    ok = (last < n) & has_target
    split[ok] = day_split[first[ok]]
    purged = ok & (day_split[np.minimum(last, n - 1)] != day_split[np.minimum(first, n - 1)])
    split[purged] = UNUSED
    return split


@dataclass
class Streams:
    """Normalised series for training: x[i] [T_i, F], y[i] [T_i, out] (NaN where there is
    no target), split[i] [T_i] (the split of the sample anchored at each step)."""

    x: list[torch.Tensor]
    y: list[torch.Tensor]
    split: list[np.ndarray]

    def anchors(self, which: int, lookback: int = 1) -> list[np.ndarray]:
        """Per series, the steps anchoring a `which` sample with a full lookback."""
        return [np.flatnonzero((s == which) & (np.arange(len(s)) >= lookback - 1))
                for s in self.split]


def windows(x: torch.Tensor, lookback: int) -> torch.Tensor:
    """All windows of `lookback` steps, as a view: [T, F] -> [T-L+1, L, F].
    Window i ends at step i+L-1 (its anchor)."""
    return x.unfold(0, lookback, 1).permute(0, 2, 1)


def to_lanes(x: np.ndarray, n_lanes: int) -> np.ndarray:
    """Lay a stream out in parallel lanes for truncated BPTT (the remainder is dropped):

        stream  a b c d e f g h i j k l          lanes=3:  lane 0: a b c d
                                                           lane 1: e f g h
                                                           lane 2: i j k l

    [T, ...] -> [B, T // B, ...]. Each lane is contiguous in time, so the hidden
    state carried along a lane always follows the step it came from."""
    steps = len(x) // n_lanes
    if steps == 0:
        raise ValueError(f"lanes: a stream of {len(x)} steps cannot fill {n_lanes} lanes")
    return x[: steps * n_lanes].reshape(n_lanes, steps, *x.shape[1:])


def lane_counts(lengths: list[int], total: int) -> list[int]:
    """Lanes per stream, proportional to its length and at least one, so that the
    lanes of all streams come out about equally long."""
    n = sum(lengths)
    return [max(1, min(length, round(total * length / n))) for length in lengths]


def pack_lanes(xs: list[np.ndarray], ys: list[np.ndarray],
               total: int) -> tuple[np.ndarray, np.ndarray]:
    """Several streams side by side in about `total` lanes, one batch:
    [T_i, F] per stream -> x [B, T, F] (zero-padded), y [B, T, out] (NaN-padded, so
    the padding carries no loss). No lane crosses from one stream into another."""
    counts = lane_counts([len(x) for x in xs], total)
    lx = [to_lanes(x, c) for x, c in zip(xs, counts, strict=True)]
    ly = [to_lanes(y, c) for y, c in zip(ys, counts, strict=True)]
    steps = max(a.shape[1] for a in lx)

    def pad(parts, fill):
        return np.concatenate([np.pad(a, ((0, 0), (0, steps - a.shape[1]), (0, 0)),
                                      constant_values=fill) for a in parts])

    return pad(lx, 0.0), pad(ly, np.nan)
