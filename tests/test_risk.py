"""Risk scores, VaR backtests and baselines: hand-checked values, no look-ahead."""

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2, norm

from pipeline.tasks.prices import risk

SPY = Path(__file__).resolve().parents[1] / "data" / "prices" / "SPY.csv"


def test_pinball_loss_by_hand():
    q_pred = np.array([[1.0, 2.0], [0.0, 1.0]])
    actual = np.array([1.5, 2.0])
    # e = actual - q: [[0.5, -0.5], [2, 1]] -> 0.1*0.5, 0.1*0.5, 0.1*2, 0.9*1
    assert risk.pinball_loss(q_pred, actual, [0.1, 0.9]) == pytest.approx(1.2 / 4)
    assert risk.pinball_loss(np.array([[3.0]]), np.array([3.0]), [0.5]) == 0.0


def test_interval_scores_by_hand():
    quantiles = [0.01, 0.05, 0.5, 0.95, 0.99]
    q_pred = np.array([[-3.0, -2.0, 0.0, 2.0, 3.0],
                       [-2.0, -1.0, 0.0, 1.0, 2.0],
                       [-1.0, -0.5, 0.0, 0.5, 1.0]])
    actual = np.array([2.0, 1.5, -1.0])  # inside / on the ends / outside
    s = risk.interval_scores(q_pred, actual, quantiles)
    assert set(s) == {"coverage_90", "width_90", "coverage_98", "width_98"}
    assert s["coverage_90"] == pytest.approx(1 / 3)  # only row 0 (2.0 is the upper end)
    assert s["width_90"] == pytest.approx((4 + 2 + 1) / 3)
    assert s["coverage_98"] == pytest.approx(1.0)  # -1.0 is row 2's lower end: included
    assert s["width_98"] == pytest.approx((6 + 4 + 2) / 3)
    two = risk.interval_scores(np.array([[-1.0, 1.0]]), np.array([0.0]), [0.025, 0.975])
    assert two == {"coverage_95": 1.0, "width_95": 2.0}
    assert risk.interval_scores(np.array([[0.0, 1.0]]), np.array([0.5]), [0.1, 0.5]) == {}


def test_adaptive_intervals_recover_coverage_after_a_shift_using_only_known_outcomes():
    """Normal intervals of unit scale on data whose scale doubles halfway: the fixed 90 %
    interval then covers about 61 %; adapted online (gamma 0.005, as Gibbs & Candes) it
    comes back near 90 % within the second half, and stays 90 % where nothing shifts."""
    rng, n, qs = np.random.default_rng(0), 3000, [0.01, 0.05, 0.5, 0.95, 0.99]
    y = rng.normal(0, np.where(np.arange(n) < n // 2, 1.0, 2.0))
    fixed = np.tile(norm.ppf(qs), (n, 1))
    adapted = risk.adaptive_intervals(fixed, y, qs, 0.005, 5)
    late = slice(n // 2 + 500, n)
    assert risk.interval_scores(fixed[late], y[late], qs)["coverage_90"] < 0.65
    assert 0.85 < risk.interval_scores(adapted[late], y[late], qs)["coverage_90"] < 0.95
    assert 0.96 < risk.interval_scores(adapted[late], y[late], qs)["coverage_98"]
    calm = rng.normal(size=n)
    assert abs(risk.interval_scores(risk.adaptive_intervals(fixed, calm, qs, 0.005, 5), calm,
                                    qs)["coverage_90"] - 0.9) < 0.02
    assert np.array_equal(adapted[:, 2], fixed[:, 2])  # the median has no pair: unchanged
    assert (np.diff(adapted, axis=1) >= 0).all()  # the adapted quantiles never cross
    # the interval at t uses outcomes up to t - 5 only: a later outcome changes nothing before
    moved = y.copy()
    moved[2000] = 100.0
    again = risk.adaptive_intervals(fixed, moved, qs, 0.005, 5)
    assert np.array_equal(again[:2005], adapted[:2005]) and not np.array_equal(again, adapted)


def test_adaptive_intervals_come_back_after_a_long_shock():
    """Scale x4 for 2,000 steps, then back to 1: beyond what the widest interval covers, so
    misses go on through the shock; the level is held where the paper keeps it, and within
    a few hundred steps after the shock the intervals are nominal again, not stuck wide."""
    rng, qs = np.random.default_rng(1), [0.01, 0.05, 0.5, 0.95, 0.99]
    scale = np.concatenate([np.ones(2000), np.full(2000, 4.0), np.ones(4000)])
    y = rng.normal(0, scale)
    fixed = np.tile(norm.ppf(qs), (len(y), 1))
    adapted = risk.adaptive_intervals(fixed, y, qs, 0.005, 1)
    after = slice(5000, 8000)
    assert 0.86 < risk.interval_scores(adapted[after], y[after], qs)["coverage_90"] < 0.94
    assert 0.96 < risk.interval_scores(adapted[after], y[after], qs)["coverage_98"] < 0.995
    assert np.median(adapted[after, 4] - adapted[after, 0]) < 1.2 * (norm.ppf(0.99) * 2)


def test_qlike():
    loss = risk.qlike(np.array([1.0, 2.0, 1.0, 0.5]), np.array([1.0, 1.0, 0.0, 1.0]))
    assert loss[0] == 0.0  # perfect forecast
    assert loss[1] == pytest.approx(0.5 - math.log(0.5) - 1)
    assert np.isfinite(loss[2]) and loss[2] == pytest.approx(1e-12 - math.log(1e-12) - 1)
    assert loss[3] == pytest.approx(2 - math.log(2) - 1)
    rng = np.random.default_rng(0)
    v = rng.uniform(0.1, 2, 100)
    assert np.all(risk.qlike(v * rng.uniform(1.01, 3, 100), v) > 0)


def test_diebold_mariano_loss():
    rng = np.random.default_rng(2)
    loss = rng.uniform(size=200)
    assert risk.diebold_mariano_loss(loss, loss, 3) == 1.0
    assert risk.diebold_mariano_loss(0.5 * loss, loss + 0.5, 1) < 1e-6
    # equally good forecasts: the test rejects at 5 % about 5 % of the time
    p = [risk.diebold_mariano_loss(rng.normal(size=300) ** 2, rng.normal(size=300) ** 2, 3)
         for _ in range(400)]
    assert 0.02 < np.mean(np.array(p) < 0.05) < 0.09


def test_kupiec_by_hand():
    n, x, tau = 250, 8, 0.01
    hits = np.zeros(n, bool)
    hits[[3, 40, 41, 90, 120, 160, 200, 249]] = True
    lr = (-2 * ((n - x) * math.log(1 - tau) + x * math.log(tau))
          + 2 * ((n - x) * math.log(1 - x / n) + x * math.log(x / n)))
    assert lr == pytest.approx(7.7336, abs=1e-4)
    assert risk.kupiec_pof(hits, tau) == pytest.approx(chi2.sf(lr, 1))
    assert risk.kupiec_pof(hits, tau) == pytest.approx(0.00542, abs=1e-5)
    # no hits: LR = -2 N ln(1 - tau); all hits: LR = -2 N ln(tau); both finite
    none = risk.kupiec_pof(np.zeros(n, bool), tau)
    assert none == pytest.approx(chi2.sf(-2 * n * math.log(1 - tau), 1))
    assert risk.kupiec_pof(np.ones(10, bool), 0.5) == pytest.approx(
        chi2.sf(-20 * math.log(0.5), 1))
    assert risk.kupiec_pof(hits, x / n) == pytest.approx(1.0)  # observed = expected rate
    assert risk.kupiec_pof(np.zeros(0, bool), tau) == 1.0


def test_christoffersen_by_hand():
    hits = np.array([0, 0, 1, 1, 0, 0, 0, 1, 1, 0], bool)
    n00, n01, n10, n11 = 3, 2, 2, 2  # counted by hand from the 9 transitions
    pi0, pi1, pi = n01 / (n00 + n01), n11 / (n10 + n11), (n01 + n11) / 9
    lr = 2 * (n00 * math.log(1 - pi0) + n01 * math.log(pi0) + n10 * math.log(1 - pi1)
              + n11 * math.log(pi1) - (n00 + n10) * math.log(1 - pi) - 4 * math.log(pi))
    assert risk.christoffersen_independence(hits) == pytest.approx(chi2.sf(lr, 1))
    clustered = np.zeros(500, bool)
    for start in (100, 300, 400):
        clustered[start:start + 5] = True
    assert risk.christoffersen_independence(clustered) < 1e-10
    iid = np.random.default_rng(0).random(500) < 0.05
    assert risk.christoffersen_independence(iid) > 0.5
    assert risk.christoffersen_independence(np.tile([True, False], 50)) < 1e-10  # alternating
    for undefined in ([], [True], np.zeros(50), np.ones(50)):
        assert risk.christoffersen_independence(np.array(undefined, bool)) == 1.0


def test_historical_quantiles_by_hand():
    y = np.arange(100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a too-short window gives NaN, not a warning
        q = risk.historical_quantiles(y, np.array([1, 21, 22, 50]), 3, [0.05, 0.5, 1.0],
                                      window=20)
    assert np.all(np.isnan(q[0]))  # nothing realised yet
    q = q[1:]
    assert np.all(np.isnan(q[0]))  # y[0..18]: 19 values, fewer than 20
    assert q[1] == pytest.approx([0.95, 9.5, 19.0])  # y[0..19]
    assert q[2] == pytest.approx([28.95, 37.5, 47.0])  # y[28..47]: known at step 50
    y_nan = y.copy()
    y_nan[40] = np.nan
    got = risk.historical_quantiles(y_nan, np.array([50]), 3, [0.25, 0.5], window=25)
    kept = [v for v in range(23, 48) if v != 40]
    assert got[0] == pytest.approx(np.quantile(kept, [0.25, 0.5]))


def test_historical_quantiles_use_only_realised_targets():
    y = np.random.default_rng(3).normal(size=300)
    anchors = np.arange(0, 300, 7)
    base = risk.historical_quantiles(y, anchors, 5, [0.01, 0.5, 0.99], window=40)
    for t in (100, 200):
        later = y.copy()
        later[t - 5 + 1:] = 50.0  # targets not yet realised at t
        again = risk.historical_quantiles(later, anchors, 5, [0.01, 0.5, 0.99], window=40)
        np.testing.assert_array_equal(again[anchors <= t], base[anchors <= t])
    y[200 - 5] = 50.0  # the latest realised target at 200 is used
    assert risk.historical_quantiles(y, np.array([200]), 5, [1.0], window=40)[0, 0] == 50.0


@pytest.fixture(scope="module")
def spy_returns():
    return np.diff(np.log(pd.read_csv(SPY)["Adj Close"].to_numpy()))


def test_garch_on_spy(spy_returns):
    r, train = spy_returns, np.arange(1700)
    anchors = np.arange(1700, len(r) - 5)
    out = risk.garch_forecasts(r, train, anchors, 5, [0.05, 0.5, 0.95])
    p = out["params"]
    assert set(p) == {"mu", "omega", "alpha", "beta"}
    assert 0 < p["alpha"] < 0.3 and 0.6 < p["beta"] < 1 and p["alpha"] + p["beta"] < 1
    assert 0 < p["omega"] < 1e-4 and abs(p["mu"]) < 5e-3  # return units, not per cent
    assert np.all(np.isfinite(out["vol"])) and np.all(out["vol"] > 0)
    assert out["vol"].shape == (len(anchors),) and out["quantiles"].shape == (len(anchors), 3)
    assert np.all(out["mean"] == p["mu"]) and out["mean"].shape == (len(anchors), 5)
    assert 0.003 < np.median(out["vol"]) < 0.03  # daily SPY volatility


def test_garch_row_t_uses_data_through_t(spy_returns):
    """Row t is the forecast of r[t+1..] from r[..t]: the GARCH recursion by hand."""
    r = spy_returns
    anchors = np.arange(1800, 1900)
    one = risk.garch_forecasts(r, np.arange(1700), anchors, 1, [0.01, 0.99])
    p = one["params"]
    mu, om, a, b = p["mu"], p["omega"], p["alpha"], p["beta"]
    var1 = one["vol"] ** 2 - mu ** 2  # sigma^2[t+1] from data through t
    expect = om + a * (r[anchors[1:]] - mu) ** 2 + b * var1[:-1]
    np.testing.assert_allclose(var1[1:], expect, rtol=1e-9)
    np.testing.assert_allclose(one["quantiles"],
                               mu + np.sqrt(var1)[:, None] * norm.ppf([0.01, 0.99]), rtol=1e-9)
    five = risk.garch_forecasts(r, np.arange(1700), anchors, 5, [0.5])
    s2, path = var1.copy(), [var1]
    for _ in range(4):
        s2 = om + (a + b) * s2
        path.append(s2)
    np.testing.assert_allclose(five["vol"] ** 2, mu ** 2 + np.mean(path, axis=0), rtol=1e-9)


def test_garch_has_no_look_ahead(spy_returns):
    r, t = spy_returns, 2000
    anchors = np.array([1750, 1900, t])
    base = risk.garch_forecasts(r, np.arange(1700), anchors, 5, [0.05, 0.95])
    later = r.copy()
    later[t + 1:] = 3 * np.random.default_rng(4).permutation(r[t + 1:])
    again = risk.garch_forecasts(later, np.arange(1700), anchors, 5, [0.05, 0.95])
    assert again["params"] == base["params"]
    for key in ("vol", "mean", "quantiles"):
        np.testing.assert_allclose(again[key], base[key], rtol=1e-12)
    later[t] = 0.1  # r[t] itself is known at t and moves the forecast
    moved = risk.garch_forecasts(later, np.arange(1700), anchors, 5, [0.05, 0.95])
    assert moved["vol"][-1] > 1.5 * base["vol"][-1]
    np.testing.assert_allclose(moved["vol"][:-1], base["vol"][:-1], rtol=1e-12)


def test_garch_recovers_simulated_params():
    mu, om, a, b, n = 5e-4, 2e-6, 0.08, 0.9, 5000
    z = np.random.default_rng(5).standard_normal(n)
    r, sigma2 = np.empty(n), np.empty(n + 1)
    sigma2[0] = om / (1 - a - b)
    for t in range(n):  # sigma2[t] is the variance of r[t] given r[..t-1]
        r[t] = mu + math.sqrt(sigma2[t]) * z[t]
        sigma2[t + 1] = om + a * (r[t] - mu) ** 2 + b * sigma2[t]
    anchors = np.arange(100, n - 1)
    out = risk.garch_forecasts(r, np.arange(n), anchors, 1, [0.5])
    p = out["params"]
    assert p["alpha"] == pytest.approx(a, abs=0.03) and p["beta"] == pytest.approx(b, abs=0.04)
    assert p["alpha"] + p["beta"] == pytest.approx(a + b, abs=0.02)
    # mu: sd of its estimate about sqrt(om / (1 - a - b) / n) = 1.4e-4
    assert p["omega"] == pytest.approx(om, rel=0.6) and p["mu"] == pytest.approx(mu, abs=5e-4)
    assert np.corrcoef(out["vol"], np.sqrt(sigma2[anchors + 1]))[0, 1] > 0.9


def _failed_fit():
    return SimpleNamespace(convergence_flag=4, params=SimpleNamespace(
        to_numpy=lambda: np.array([0.0, 0.02, 0.05, 0.95])),
        optimization_result=SimpleNamespace(message="Iteration limit"))


def test_garch_fit_failure_is_a_value_error(monkeypatch, spy_returns):
    tries = []
    model = SimpleNamespace(fit=lambda **kw: tries.append(kw) or _failed_fit())
    monkeypatch.setattr(risk, "_garch_model", lambda r: model)
    with pytest.raises(ValueError, match="did not converge.*Iteration limit"):
        risk.garch_forecasts(spy_returns, np.arange(1700), np.arange(1700, 1710), 1, [0.5])
    assert len(tries) == 1 + risk.GARCH_RESTARTS


def test_garch_fit_that_stopped_short_goes_on_inside_the_constraints(monkeypatch, spy_returns):
    """SLSQP's failed line search near alpha + beta = 1 (MTG's 2000-2015 returns did it):
    the fit starts again from where it stopped, moved inside alpha + beta < 1."""
    real, starts = risk._garch_model, []

    class FailsFirst:
        def __init__(self, r):
            self.model = real(r)

        def fit(self, **kw):
            starts.append(kw.get("starting_values"))
            return _failed_fit() if len(starts) == 1 else self.model.fit(**kw)

    monkeypatch.setattr(risk, "_garch_model", FailsFirst)
    out = risk._fit_garch(100 * spy_returns[:1700])
    assert out.convergence_flag == 0 and len(starts) == 2
    assert starts[1][2] + starts[1][3] == pytest.approx(0.9) and starts[1][1] == 0.02
