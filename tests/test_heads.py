"""Distributional outputs of price networks (models/heads.py): losses by hand, quantiles
that never cross, raw units and column names as served."""

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from data_loaders.sequences import Normaliser
from models import heads

QS = [0.05, 0.5, 0.95]


def test_quantiles_never_cross_whatever_the_raw_outputs():
    raw = torch.randn(1000, 2 * 3) * 10  # two target columns, three quantiles
    q = heads.quantiles_of(raw, 3)
    assert q.shape == (1000, 2, 3)
    assert (q.diff(dim=-1) >= 0).all()  # equal at most, where a softplus underflows


def test_pinball_loss_by_hand():
    raw = torch.tensor([[0.0, 0.0, 0.0]])  # quantiles 0, log 2, 2 log 2
    q = [0.0, math.log(2), 2 * math.log(2)]
    y = 1.0
    expected = np.mean([max(t * (y - v), (t - 1) * (y - v)) for t, v in zip(QS, q, strict=True)])
    got = heads.loss_fn("quantile", QS)(raw, torch.tensor([[y]]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_gaussian_nll_by_hand_and_nan_targets_ignored():
    raw = torch.tensor([[0.5, 0.0], [9.0, 9.0]])  # mean 0.5, scale softplus(0) = log 2
    target = torch.tensor([[1.5], [float("nan")]])
    scale = math.log(2) + heads.MIN_SCALE
    expected = math.log(scale) + 0.5 * ((1.5 - 0.5) / scale) ** 2 + 0.5 * math.log(2 * math.pi)
    assert heads.loss_fn("gaussian", QS)(raw, target).item() == pytest.approx(expected)


def test_raw_units_and_columns():
    norm = Normaliser(np.array([0.01]), np.array([0.002]))
    spec = {"outputs": ["volatility_h5"], "loss": "gaussian", "quantiles": QS}
    raw = np.array([[1.0, 0.0]], np.float32)
    got = heads.denormalise(raw, spec, norm)
    scale = (math.log(2) + heads.MIN_SCALE) * 0.002
    assert got["point"][0, 0] == pytest.approx(0.01 + 0.002)
    assert got["scale"][0, 0] == pytest.approx(scale, rel=1e-5)
    assert got["quantiles"][0, 0, 2] == pytest.approx(0.012 + scale * NormalDist().inv_cdf(0.95),
                                                      rel=1e-5)
    cols = heads.columns(spec, got)
    assert list(cols) == heads.column_names(spec) == [
        "volatility_h5", "volatility_h5_scale", "volatility_h5_q5", "volatility_h5_q50",
        "volatility_h5_q95"]
    quantile = {**spec, "loss": "quantile", "quantiles": [0.01, 0.5, 0.975]}
    assert heads.column_names(quantile) == ["volatility_h5", "volatility_h5_q1",
                                            "volatility_h5_q50", "volatility_h5_q97.5"]
    assert heads.column_names({**spec, "loss": "mse", "quantiles": []}) == ["volatility_h5"]


@pytest.mark.parametrize("loss", ["gaussian", "quantile"])
def test_quantiles_of_a_volatility_are_never_below_zero(loss):
    raw = np.array([[-4.0, 0.0, 0.0], [2.0, 0.0, 0.0]], np.float32)[:, :{"gaussian": 2,
                                                                      "quantile": 3}[loss]]
    norm = Normaliser(np.array([0.01]), np.array([0.01]))
    spec = {"outputs": ["volatility_h5"], "loss": loss, "quantiles": QS, "target": "volatility"}
    vol = heads.denormalise(raw, spec, norm)["quantiles"]
    ret = heads.denormalise(raw, {**spec, "target": "returns"}, norm)["quantiles"]
    assert ret.min() < 0 and vol.min() == 0.0  # the first row's low quantiles, floored
    assert (np.diff(vol, axis=-1) >= 0).all() and (vol[1] == ret[1]).all()


def test_the_quantile_model_serves_its_median_as_the_point():
    spec = {"outputs": ["return_h1"], "loss": "quantile", "quantiles": QS}
    got = heads.denormalise(np.array([[0.0, 0.0, 0.0]], np.float32), spec,
                            Normaliser(np.array([0.0]), np.array([1.0])))
    assert got["point"][0, 0] == pytest.approx(math.log(2)) == got["quantiles"][0, 0, 1]


@pytest.mark.parametrize("text", ["0.5,0.05", "0,0.5", "0.5,1", "a", "0.5,0.5", ""])
def test_bad_quantiles_are_named(text):
    with pytest.raises(ValueError, match="quantiles"):
        heads.parse_quantiles(text)
