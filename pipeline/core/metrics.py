"""Metrics, and the baselines a forecast must beat, in raw target units.

Baselines, each computed only from information available at the anchor step t
(HAR's and the training mean's coefficients from the training split):
- returns: zero, persistence (r[t] for every horizon), training mean;
- volatility: training mean, persistence (the realised volatility of the last H
  returns), EWMA(0.94) (RiskMetrics) and HAR (an OLS regression on the 1-, 5- and
  22-day realised volatility, the standard benchmark). No zero forecast: a volatility
  of zero is no forecast (its QLIKE is infinite).
GARCH(1,1) and historical simulation, fit with `arch` and from past targets, are in
pipeline/tasks/prices/risk.py.
"""

from __future__ import annotations

import numpy as np

from data_loaders.prices import realised_vol, trailing_vol

HAR_WINDOWS = (1, 5, 22)


def ewma_vol(returns: np.ndarray) -> np.ndarray:
    """RiskMetrics' EWMA(0.94) volatility, sigma_t^2 = lam sigma_(t-1)^2 + (1 - lam) r_t^2,
    the forecast for every future step: the trailing volatility scale-free inputs are
    divided by (data_loaders.prices.trailing_vol)."""
    return trailing_vol(returns)


def har_design(returns: np.ndarray) -> np.ndarray:
    """[T, 4]: intercept and the realised volatility over the last 1, 5 and 22 steps."""
    cols = [realised_vol(returns, w) for w in HAR_WINDOWS]
    return np.column_stack([np.ones(len(returns)), *cols])


def baseline_forecasts(returns: list[np.ndarray], targets: list[np.ndarray],
                       train_idx: list[np.ndarray], target: str,
                       horizon: int) -> dict[str, list[np.ndarray]]:
    """{baseline: per series [T, out] forecasts} for every step of every series."""
    out_dim = targets[0].shape[1]
    train_y = np.concatenate([y[i] for y, i in zip(targets, train_idx, strict=True)])
    mean = train_y.mean(axis=0)
    fc = {"train_mean": [np.tile(mean, (len(r), 1)) for r in returns]}
    if target == "returns":
        fc["zero"] = [np.zeros((len(r), out_dim)) for r in returns]
        fc["persistence"] = [np.tile(np.asarray(r)[:, None], (1, out_dim)) for r in returns]
        return fc
    fc["persistence"] = [realised_vol(r, horizon)[:, None] for r in returns]
    fc["ewma"] = [ewma_vol(r)[:, None] for r in returns]
    designs = [har_design(r) for r in returns]
    xs = np.concatenate([d[i] for d, i in zip(designs, train_idx, strict=True)])
    ys = np.concatenate([y[i] for y, i in zip(targets, train_idx, strict=True)])
    ok = ~np.isnan(xs).any(1)
    coef, *_ = np.linalg.lstsq(xs[ok], ys[ok], rcond=None)
    fc["har"] = [d @ coef for d in designs]
    return fc


def directional_accuracy(pred: np.ndarray, actual: np.ndarray, ref: np.ndarray) -> float:
    """Share of forecasts that move the same way as the outcome relative to `ref` (zero
    for returns, the persistence forecast for volatility). A forecast of no move
    scores one half: it calls no direction."""
    p, a = np.sign(pred - ref), np.sign(actual - ref)
    keep = a != 0
    score = np.where(p == 0, 0.5, (p == a).astype(float))
    return float(score[keep].mean()) if keep.any() else 0.5


def forecast_metrics(pred: np.ndarray, actual: np.ndarray, ref: np.ndarray) -> dict:
    """RMSE, MAE, directional accuracy and out-of-sample R^2 against the zero forecast."""
    pred, actual = np.asarray(pred, np.float64), np.asarray(actual, np.float64)
    err = pred - actual
    return {
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "mae": float(np.mean(np.abs(err))),
        "dir_acc": directional_accuracy(pred, actual, ref),
        "r2_oos": float(1 - np.sum(err ** 2) / np.sum(actual ** 2)),
    }


def classification_scores(pred: np.ndarray, true: np.ndarray, n_classes: int) -> dict:
    """Accuracy and macro-F1 (the mean of per-class F1, F1 = 2TP / (2TP + FP + FN); a
    class never predicted and never present is left out)."""
    f1 = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (true == c))
        fp, fn = np.sum((pred == c) & (true != c)), np.sum((pred != c) & (true == c))
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(pred == true)), "macro_f1": float(np.mean(f1))}


def confusion(pred: np.ndarray, true: np.ndarray, n: int) -> np.ndarray:
    """Counts [n, n]: true class down, predicted class across."""
    m = np.zeros((n, n), int)
    np.add.at(m, (true, pred), 1)
    return m


def test_metrics(table: dict) -> dict:
    """{method: {metric: value}} -> {test_metric: ...} for the model and
    {test_metric_method: ...} for each baseline (numbers only)."""
    flat = {}
    for method, row in table.items():
        suffix = "" if method == "model" else f"_{method}"
        flat.update({f"test_{k}{suffix}": v for k, v in row.items()
                     if isinstance(v, int | float)})
    return flat
