"""Calibrated probabilities and the "unknown" rule of a classifier, fit on validation.

- Temperature scaling (Guo et al., 2017): logits / T, with T minimising the
  validation negative log-likelihood; it changes no argmax, only confidence.
- Unknown: an utterance is "unknown" when the network's extra output, trained on
  generated non-speech (`nonspeech` > 0 in training), is its top one, or when the
  calibrated probability of its top class is below `min_probability`, the
  validation quantile that rejects `rate` of the validation utterances.

The fitted rule is a plain dict, stored in the model's spec (model.json). The
probabilities returned are the classes' own (with an unknown output they sum to
less than one: the rest is its share).
"""

from __future__ import annotations

import numpy as np
import torch

UNKNOWN = "unknown"
LOW_CONFIDENCE = "low confidence"
NOT_SPEECH = "sounds like the non-speech it was trained to reject"


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The T in [0.05, 20] that minimises the validation NLL of logits / T: a bounded
    1-D search over log T in float64 (Brent's method). The NLL is smooth in log T, but
    LBFGS on it was seen to step to NaN on real validation logits."""
    from scipy.optimize import minimize_scalar

    z = logits.detach().double()
    if not torch.isfinite(z).all():
        raise ValueError("temperature: the network's validation outputs are not finite")

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / np.exp(log_t), y))

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                            options={"xatol": 1e-4})
    return float(np.exp(found.x))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    conf, right = probs.max(1), probs.argmax(1) == y
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(right[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def fit_rule(val_logits: torch.Tensor, val_y: torch.Tensor, n_classes: int,
             rate: float) -> dict:
    """The temperature and the threshold, for a network with n_classes outputs, plus one
    for unknown when it has n_classes + 1; `rate` = 0 never rejects for low confidence."""
    t = fit_temperature(val_logits, val_y)
    top = torch.softmax(val_logits / t, 1)[:, :n_classes].max(1).values.numpy()
    return {"temperature": t, "unknown_output": val_logits.shape[1] > n_classes,
            "min_probability": float(np.quantile(top, rate)) if rate else 0.0}


def apply_rule(logits: torch.Tensor, rule: dict, n_classes: int):
    """The classes' calibrated probabilities [N, n_classes] (float64) and, per row, why it
    is unknown ("" when it is not)."""
    probs = torch.softmax(logits.double() / rule["temperature"], 1).numpy()
    not_speech = (probs.argmax(1) == n_classes) if rule["unknown_output"] else \
        np.zeros(len(probs), bool)
    probs = probs[:, :n_classes]
    low = probs.max(1) < rule["min_probability"]
    return probs, [NOT_SPEECH if n else LOW_CONFIDENCE if lo else ""
                   for n, lo in zip(not_speech, low, strict=True)]
