"""Distributional and risk forecasts of prices: scores, backtests and two baselines.

Scores of quantile forecasts (pinball loss, central-interval coverage and width), the
QLIKE volatility loss, a Diebold-Mariano test on any per-sample loss, the Kupiec and
Christoffersen Value-at-Risk backtests, and two VaR / volatility baselines that use
only information available at the anchor step t: historical simulation and
GARCH(1,1) (fitted once on the training stretch with `arch`, then run with the
parameters fixed). Returns are log returns; step t's return r[t] is known at t.
"""

from __future__ import annotations

import math
import warnings
from statistics import NormalDist

import numpy as np
from scipy.special import xlogy
from scipy.stats import chi2, norm

MIN_HISTORY = 20  # historical simulation: fewest realised values that make a quantile
VAR_FLOOR = 1e-12  # QLIKE: variances are floored here so a zero realised variance is finite
GARCH_SCALE = 100.0  # returns are fitted in per cent (see garch_forecasts)
_normal = NormalDist()  # its inv_cdf: one quantile at a time, fast in a loop
GARCH_RESTARTS = 2  # a fit that did not converge is taken up again from where it stopped


def pinball_loss(q_pred: np.ndarray, actual: np.ndarray, quantiles: list[float]) -> float:
    """Mean over samples and quantiles of the pinball (quantile) loss
    rho_tau(e) = max(tau e, (tau - 1) e), e = actual - q (Koenker & Bassett 1978,
    "Regression quantiles", Econometrica). q_pred [N, Q], actual [N], quantiles [Q]."""
    tau = np.asarray(quantiles, np.float64)[None, :]
    e = np.asarray(actual, np.float64)[:, None] - np.asarray(q_pred, np.float64)
    return float(np.mean(np.maximum(tau * e, (tau - 1) * e)))


def central_pairs(quantiles: list[float]) -> list[tuple[int, int]]:
    """(i, j) of each central interval [q_tau, q_{1-tau}], tau < 0.5, whose two ends are
    both among the quantiles."""
    pairs = []
    for i, tau in enumerate(quantiles):
        upper = [j for j, u in enumerate(quantiles) if abs(u - (1 - tau)) < 1e-9]
        if tau < 0.5 and upper:
            pairs.append((i, upper[0]))
    return pairs


def interval_scores(q_pred: np.ndarray, actual: np.ndarray, quantiles: list[float]) -> dict:
    """Coverage and width of each central interval [q_tau, q_{1-tau}], tau < 0.5, whose
    two ends are both forecast: {coverage_L: share of actual inside (ends included),
    width_L: mean(upper - lower)} with L = 100 (1 - 2 tau) per cent ("90" for 0.05).
    q_pred [N, Q], actual [N]; {} when no symmetric pair is present."""
    q_pred, actual = np.asarray(q_pred, np.float64), np.asarray(actual, np.float64)
    out = {}
    for i, j in central_pairs(quantiles):
        lo, hi = q_pred[:, i], q_pred[:, j]
        name = f"{round(100 * (1 - 2 * quantiles[i]), 6):g}"
        out[f"coverage_{name}"] = float(np.mean((actual >= lo) & (actual <= hi)))
        out[f"width_{name}"] = float(np.mean(hi - lo))
    return out


def adaptive_intervals(q_pred: np.ndarray, actual: np.ndarray, quantiles: list[float],
                       gamma: float, delay: int) -> np.ndarray:
    """Central intervals of one series' quantile forecasts [N, Q] (in time order) adapted
    online by adaptive conformal inference (Gibbs & Candes 2021, "Adaptive conformal
    inference under distribution shift", NeurIPS): for each interval of nominal miss rate
    alpha = 2 tau, the level in use moves alpha_t+1 = alpha_t + gamma (alpha - miss) as
    each outcome becomes known (`delay` forecasts later: an H-day target), and the
    interval is stretched about its centre by the normal's ratio z(alpha_t) / z(alpha).
    The stretch has a ceiling (alpha_t at 1e-6) where the paper's interval is infinite and
    always covers, so the level is held in [-gamma, 1 + gamma], the range it keeps in the
    paper: a long shock does not wind it up past what the end of the shock can undo. The
    quantiles are then sorted (rearranged) so the adapted pairs cannot cross. Uses only
    outcomes known at each forecast; quantiles without a pair stay as they are."""
    out = np.array(q_pred, np.float64)
    actual = np.asarray(actual, np.float64)
    for i, j in central_pairs(quantiles):
        alpha, z = 2 * quantiles[i], norm.ppf(1 - quantiles[i])
        mid, half = (out[:, i] + out[:, j]) / 2, (out[:, j] - out[:, i]) / 2
        level, miss = alpha, np.zeros(len(actual), bool)
        for t in range(len(actual)):
            if t >= delay:
                level = min(max(level + gamma * (alpha - miss[t - delay]), -gamma), 1 + gamma)
            stretch = _normal.inv_cdf(1 - min(max(level, 1e-6), 1.0) / 2) / z  # >= 1: a point
            out[t, i], out[t, j] = mid[t] - stretch * half[t], mid[t] + stretch * half[t]
            miss[t] = not out[t, i] <= actual[t] <= out[t, j]
    return np.sort(out, axis=1)


def qlike(var_pred: np.ndarray, var_actual: np.ndarray) -> np.ndarray:
    """Per-sample QLIKE loss v/f - log(v/f) - 1 of a variance forecast f for a realised
    variance v, both floored at VAR_FLOOR; zero at f = v, positive otherwise. Robust to
    noise in the volatility proxy (Patton 2011, "Volatility forecast comparison using
    imperfect volatility proxies", J. Econometrics 160(1)). Inputs [N] -> [N]."""
    f = np.maximum(np.asarray(var_pred, np.float64), VAR_FLOOR)
    ratio = np.maximum(np.asarray(var_actual, np.float64), VAR_FLOOR) / f
    return ratio - np.log(ratio) - 1


def diebold_mariano_loss(loss_model: np.ndarray, loss_base: np.ndarray, horizon: int) -> float:
    """Two-sided p-value of the Diebold-Mariano (1995) test of equal expected loss on the
    per-sample losses [N] of two forecasts, d = loss_model - loss_base: a Newey-West
    long-run variance of d over horizon-1 lags (overlapping forecasts), the
    Harvey-Leybourne-Newbold (1997) small-sample factor, normal reference. 1.0 when
    d is all zero or too short."""
    d = loss_model - loss_base
    n = len(d)
    if n < 3 or not np.any(d):
        return 1.0
    dc = d - d.mean()
    lrv = dc @ dc / n
    for lag in range(1, horizon):
        lrv += 2 * (1 - lag / horizon) * (dc[lag:] @ dc[:-lag]) / n
    if lrv <= 0:
        return 1.0
    hln = math.sqrt(max((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n, 1e-12))
    stat = hln * d.mean() / math.sqrt(lrv / n)
    return math.erfc(abs(stat) / math.sqrt(2))


def kupiec_pof(hits: np.ndarray, tau: float) -> float:
    """p-value of Kupiec's (1995, "Techniques for verifying the accuracy of risk
    measurement models", J. Derivatives) proportion-of-failures test that VaR
    exceptions (hits [N] bool, actual < VaR quantile) occur at rate tau:
    LR = -2 ln[(1-tau)^(N-x) tau^x] + 2 ln[(1-x/N)^(N-x) (x/N)^x] ~ chi2(1), x = sum
    of hits, 0 ln 0 = 0. 1.0 for N = 0."""
    hits = np.asarray(hits, bool)
    n, x = len(hits), int(hits.sum())
    if n == 0:
        return 1.0
    null = xlogy(n - x, 1 - tau) + xlogy(x, tau)
    alt = xlogy(n - x, 1 - x / n) + xlogy(x, x / n)
    return float(chi2.sf(max(2 * (alt - null), 0.0), 1))


def christoffersen_independence(hits: np.ndarray) -> float:
    """p-value of Christoffersen's (1998, "Evaluating interval forecasts", Int. Econ.
    Review) test that VaR exceptions (hits [N] bool) are independent over time, against
    a first-order Markov chain. With transition counts n_ij (state i then state j),
    pi0 = n01 / (n00 + n01), pi1 = n11 / (n10 + n11), pi = (n01 + n11) / (N - 1):
    LR = -2 ln[(1-pi)^(n00+n10) pi^(n01+n11)]
         + 2 ln[(1-pi0)^n00 pi0^n01 (1-pi1)^n10 pi1^n11] ~ chi2(1), 0 ln 0 = 0.
    1.0 when undefined (N < 2, no hits or all hits)."""
    h = np.asarray(hits, bool)
    if len(h) < 2 or not h.any() or h.all():
        return 1.0
    prev, nxt = h[:-1], h[1:]
    n00, n01 = np.sum(~prev & ~nxt), np.sum(~prev & nxt)
    n10, n11 = np.sum(prev & ~nxt), np.sum(prev & nxt)
    pi0, pi1 = n01 / max(n00 + n01, 1), n11 / max(n10 + n11, 1)
    pi = (n01 + n11) / (len(h) - 1)
    null = xlogy(n00 + n10, 1 - pi) + xlogy(n01 + n11, pi)
    alt = xlogy(n00, 1 - pi0) + xlogy(n01, pi0) + xlogy(n10, 1 - pi1) + xlogy(n11, pi1)
    return float(chi2.sf(max(2 * (alt - null), 0.0), 1))


def historical_quantiles(known: np.ndarray, anchors: np.ndarray, horizon: int,
                         quantiles, window: int = 250) -> np.ndarray:
    """Historical simulation: at each anchor t the empirical quantiles (np.quantile,
    linear interpolation) of the last `window` targets already realised at t,
    y[max(0, t-H-window+1) .. t-H] (y[s] covers steps s+1..s+H, so it is known at s+H),
    NaN ignored; a NaN row when fewer than MIN_HISTORY values remain. known [T],
    anchors [N] step indices -> [N, Q]."""
    y = np.asarray(known, np.float64)
    last = np.asarray(anchors, int) - horizon  # the latest realised target per anchor
    idx = last[:, None] - np.arange(window)[::-1][None, :]  # [N, window]
    vals = np.where(idx >= 0, y[np.clip(idx, 0, None)], np.nan)
    enough = np.sum(~np.isnan(vals), axis=1) >= MIN_HISTORY
    vals[~enough] = 0.0  # placeholder: keeps nanquantile from warning on empty rows
    out = np.nanquantile(vals, np.asarray(quantiles, np.float64), axis=1).T
    out[~enough] = np.nan
    return out


def _garch_model(returns: np.ndarray):
    """arch's GARCH(1,1) with a constant mean and normal errors on `returns` [T]."""
    from arch import arch_model  # imported here: only this baseline needs arch

    return arch_model(returns, mean="Constant", vol="GARCH", p=1, q=1, dist="normal")


def _fit_garch(returns: np.ndarray):
    """Fit _garch_model to `returns` (already scaled); a ValueError when the optimiser
    does not converge."""
    from arch.utility.exceptions import ConvergenceWarning, DataScaleWarning, StartingValueWarning

    model = _garch_model(returns)
    with warnings.catch_warnings():
        # a failed fit is reported below; the data are rescaled by the caller already
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DataScaleWarning)
        warnings.simplefilter("ignore", StartingValueWarning)
        res = model.fit(disp="off")
        for _ in range(GARCH_RESTARTS):  # SLSQP can stop at a failed line search ("code 8")
            if res.convergence_flag == 0:  # near alpha + beta = 1: going on from there,
                break  # pulled inside the constraints (else arch ignores it), helps
            mu, omega, alpha, beta = res.params.to_numpy()
            res = model.fit(disp="off", starting_values=np.array([mu, omega, 0.9 * alpha,
                                                                   0.9 * beta]))
    if res.convergence_flag != 0:
        raise ValueError("GARCH(1,1) fit did not converge on the training returns: "
                         f"{res.optimization_result.message}")
    return res


def garch_forecasts(returns: np.ndarray, train_idx: np.ndarray, anchors: np.ndarray,
                    horizon: int, quantiles) -> dict:
    """GARCH(1,1) forecasts (Bollerslev 1986, "Generalized autoregressive conditional
    heteroskedasticity", J. Econometrics): r[t] = mu + e[t], e[t] = sigma[t] z[t],
    z ~ N(0, 1), sigma^2[t+1] = omega + alpha e[t]^2 + beta sigma^2[t]. Fitted once on
    r[0 .. max(train_idx)] (training only), then run over the whole series with the
    parameters fixed; from each anchor t (data through r[t]) the analytic forecasts
    sigma^2[t+h] = omega + (alpha + beta) sigma^2[t+h-1] for h = 2..H.
    returns [T]; anchors [N] step indices. Returns {"vol": [N] sqrt(mean_h E[r^2]) over
    the next H returns, E[r^2] = mu^2 + sigma^2 (the realised-volatility target is
    sqrt(mean r^2), not centred); "mean": [N, H]; "quantiles": [N, Q] of r[t+1],
    mu + sigma[t+1] Phi^-1(tau); "params": {mu, omega, alpha, beta} in return units}.
    The recursion starts from arch's backcast (a weighted mean of the first 75 squared
    residuals), so only anchors t < 74 see returns after t; these lie in training. (arch
    also clips variances to an EWMA / 1e6 .. EWMA * 1e6 band, floored and capped with
    full-sample moments; so loose that it does not bind on return data.)"""
    r = GARCH_SCALE * np.asarray(returns, np.float64)
    anchors = np.asarray(anchors, int)
    # in per cent the variances are O(1): the optimiser's tolerances and arch's
    # starting values assume that scale, and raw daily variances of ~1e-4 fit poorly
    params = _fit_garch(r[: int(np.max(train_idx)) + 1]).params.to_numpy()
    fixed = _garch_model(r).fix(params)
    start = int(anchors.min())
    # row t of arch's "origin"-aligned forecast holds r[t+1..t+H] made with data through
    # r[t] (checked against the recursion above in tests/test_risk.py)
    fc = fixed.forecast(horizon=horizon, start=start, reindex=False)
    var = fc.variance.to_numpy()[anchors - start] / GARCH_SCALE ** 2
    mean = fc.mean.to_numpy()[anchors - start] / GARCH_SCALE
    z = norm.ppf(np.asarray(quantiles, np.float64))
    mu, omega, alpha, beta = (float(p) for p in params)
    return {
        "vol": np.sqrt(np.mean(mean ** 2 + var, axis=1)),
        "mean": mean,
        "quantiles": mean[:, :1] + np.sqrt(var[:, :1]) * z[None, :],
        "params": {"mu": mu / GARCH_SCALE, "omega": omega / GARCH_SCALE ** 2,
                   "alpha": alpha, "beta": beta},
    }
