"""Calibrated probabilities and the "unknown" rule of a classifier, fit on validation.

- Temperature scaling (Guo et al., 2017): logits / T, with T minimising the
  validation negative log-likelihood; it changes no argmax, only confidence.
- Unknown: an utterance is rejected when its calibrated top probability is below
  `min_probability`, or when its embedding (the mean of the top layer's hidden
  states) is farther from every class than `max_distance`, measured as the
  Mahalanobis distance to the class means with one covariance shared by the
  classes (Lee et al., 2018), fit on the training utterances. Both thresholds are
  validation quantiles, so that together they reject about `rate` of the
  validation utterances.

The fitted rule is a plain dict, stored in the model's spec (model.json).
"""

from __future__ import annotations

import numpy as np
import torch

UNKNOWN = "unknown"


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    conf, right = probs.max(1), probs.argmax(1) == y
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(right[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def class_gaussian(emb: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Class means and the precision of the covariance they share (ridge-regularised)."""
    means = np.stack([emb[y == c].mean(0) for c in range(n_classes)])
    centred = emb - means[y]
    cov = centred.T @ centred / len(emb)
    cov += 1e-3 * np.trace(cov) / len(cov) * np.eye(len(cov))
    return {"means": means.tolist(), "precision": np.linalg.inv(cov).tolist()}


def distance(emb: np.ndarray, rule: dict) -> np.ndarray:
    """Each embedding's Mahalanobis distance to its nearest class mean."""
    means, precision = np.asarray(rule["means"]), np.asarray(rule["precision"])
    diff = emb[:, None, :] - means[None]  # [N, C, H]
    d2 = np.einsum("nch,hk,nck->nc", diff, precision, diff)
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def fit_rule(val_logits: torch.Tensor, val_y: torch.Tensor, val_emb: np.ndarray,
             train_emb: np.ndarray, train_y: np.ndarray, rate: float) -> dict:
    """The temperature and both thresholds; `rate` = 0 never rejects."""
    t = fit_temperature(val_logits, val_y)
    rule = {"temperature": t, **class_gaussian(train_emb, train_y, val_logits.shape[1])}
    probs = torch.softmax(val_logits / t, 1).numpy().max(1)
    dist = distance(val_emb, rule)
    rule["min_probability"] = float(np.quantile(probs, rate / 2)) if rate else 0.0
    rule["max_distance"] = float(np.quantile(dist, 1 - rate / 2)) if rate else float("inf")
    return rule


LOW_CONFIDENCE = "low confidence"
UNFAMILIAR = "unlike the training utterances"


def apply_rule(logits: torch.Tensor, emb: np.ndarray, rule: dict):
    """Calibrated probabilities [N, C] (float64) and, per row, why it is unknown ("" when
    it is not)."""
    probs = torch.softmax(logits / rule["temperature"], 1).numpy().astype(np.float64)
    far = distance(emb, rule) > rule["max_distance"]
    low = probs.max(1) < rule["min_probability"]
    return probs, [UNFAMILIAR if f else LOW_CONFIDENCE if lo else ""
                   for f, lo in zip(far, low, strict=True)]
