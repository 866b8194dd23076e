"""Splits, purging, the normaliser, windows and lanes."""

import numpy as np
import pandas as pd
import torch

from data_loaders.sequences import (
    TEST,
    TRAIN,
    UNUSED,
    VAL,
    Normaliser,
    assign_splits,
    date_cutoffs,
    to_lanes,
    windows,
)
from pipeline import tasks
from pipeline.core.config import build_config
from tests.conftest import SPY


def test_assign_splits_by_first_target_day_and_purges_overlaps():
    dates = pd.date_range("2020-01-01", periods=20).to_numpy()
    cut = (pd.Timestamp("2020-01-11"), pd.Timestamp("2020-01-16"))
    split = assign_splits(dates, 3, np.ones(20, bool), cut)
    # the sample at t has targets on days t+1..t+3; day 10 starts validation, day 15 test
    assert (split[:7] == TRAIN).all()
    assert (split[7:9] == UNUSED).all()  # targets straddle the validation start
    assert (split[9:12] == VAL).all() and (split[12:14] == UNUSED).all()
    assert (split[14:17] == TEST).all()
    assert (split[17:] == UNUSED).all()  # no full future


def test_cutoffs_are_shared_calendar_days():
    a = pd.date_range("2000-01-01", periods=100).to_numpy()
    b = pd.date_range("2000-03-01", periods=100).to_numpy()
    val, test = date_cutoffs([a, b], 0.2, 0.1)
    days = np.unique(np.concatenate([a, b]))
    assert val == pd.Timestamp(days[int(len(days) * 0.7)])
    assert test == pd.Timestamp(days[int(len(days) * 0.9)])


def test_normaliser_is_fit_on_training_rows_only():
    prep = tasks.load("prices").prepare(build_config({"data": SPY}))
    train = prep.x[0][prep.split[0] == TRAIN]
    assert np.allclose(prep.x_norm.mean_, train.mean(0), atol=1e-6)
    everything = prep.x[0]
    assert not np.allclose(prep.x_norm.mean_, everything.mean(0), atol=1e-6)
    z = prep.x_norm.transform(train)
    assert np.allclose(z.mean(0), 0, atol=1e-4) and np.allclose(z.std(0), 1, atol=1e-3)
    back = Normaliser.from_dict(prep.x_norm.to_dict()).inverse_transform(z)
    assert np.allclose(back, train, atol=1e-6)


def test_windows_end_at_their_anchor():
    x = torch.arange(10.0).reshape(10, 1)
    w = windows(x, 4)
    assert w.shape == (7, 4, 1)
    assert w[2, :, 0].tolist() == [2.0, 3.0, 4.0, 5.0]


def test_lanes_are_contiguous_pieces_of_the_stream():
    lanes = to_lanes(np.arange(13), 3)
    assert lanes.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
