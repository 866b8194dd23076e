"""Metrics and baselines: hand-checked values, no look-ahead."""

import numpy as np
import pytest

from pipeline.core import metrics


def test_forecast_metrics_by_hand():
    actual = np.array([[0.02], [-0.01], [0.03], [-0.02]])
    pred = np.array([[0.01], [0.01], [0.0], [-0.01]])
    m = metrics.forecast_metrics(pred, actual, np.zeros_like(actual))
    err = pred - actual
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)))
    assert m["mae"] == pytest.approx(np.mean(np.abs(err)))
    assert m["dir_acc"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)  # a zero forecast scores 1/2
    assert m["r2_oos"] == pytest.approx(1 - np.sum(err ** 2) / np.sum(actual ** 2))


def test_ewma_recursion():
    r = np.linspace(-0.02, 0.02, 40)
    v = metrics.ewma_vol(r)
    prev = np.mean(r[:22] ** 2)
    prev = 0.94 * prev + 0.06 * r[0] ** 2
    assert v[0] == pytest.approx(np.sqrt(prev))
    assert v[5] ** 2 == pytest.approx(0.94 * v[4] ** 2 + 0.06 * r[5] ** 2)


def test_har_uses_only_the_past():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 0.01, 300)
    d1 = metrics.har_design(r)
    r2 = r.copy()
    r2[200:] = 5.0  # change the future
    d2 = metrics.har_design(r2)
    assert np.allclose(d1[:200], d2[:200], equal_nan=True)
    assert d1[100, 1] == pytest.approx(abs(r[100]))
    assert d1[100, 3] == pytest.approx(np.sqrt(np.mean(r[79:101] ** 2)))


