"""Calibrated probabilities and the "unknown" rule of a classifier, fit on validation.

- Temperature scaling (Guo et al., 2017): logits / T, with T minimising the
  validation negative log-likelihood; it changes no argmax, only confidence.
- Unknown: an utterance is "unknown" when one of the network's extra outputs is its
  top one (trained on generated non-speech, `nonspeech` > 0, or on words outside the
  vocabulary, `unknown_words` > 0; each says why in its own words), or when the
  calibrated probability of its top class is below `min_probability`, the
  validation quantile that rejects `rate` of the validation utterances.
- The "not a word" output's operating point: a shift of its calibrated logit
  (`word_bias`), set on validation words said by voices never trained on so that a
  chosen share of them comes back as a class. The network alone calls a voice unlike
  any it trained on "not a word" too often; the shift trades the two errors at a
  stated rate instead of at whatever rate training happened to leave.

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
NOT_A_WORD = "not a word it knows"


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
             rate: float, extra: tuple[str, ...] = ()) -> dict:
    """The temperature and the threshold, for a network with n_classes outputs and then
    one per reason in `extra` (NOT_SPEECH, NOT_A_WORD); `rate` = 0 never rejects for low
    confidence."""
    if val_logits.shape[1] != n_classes + len(extra):
        raise ValueError(f"unknown rule: {val_logits.shape[1]} outputs, expected {n_classes} "
                         f"classes and {len(extra)} unknown outputs")
    t = fit_temperature(val_logits, val_y)
    top = torch.softmax(val_logits / t, 1)[:, :n_classes].max(1).values.numpy()
    return {"temperature": t, "unknown_outputs": list(extra),
            "min_probability": float(np.quantile(top, rate)) if rate else 0.0}


def word_bias(word_logits: torch.Tensor, rule: dict, n_classes: int, rate: float) -> float:
    """The shift of the "not a word" output's calibrated logit under which at most `rate`
    of these validation words (none of them a class) come back as a class."""
    z = word_logits.double() / rule["temperature"]
    at = n_classes + rule["unknown_outputs"].index(NOT_A_WORD)
    best = z[:, :n_classes].max(1).values
    others = torch.cat([z[:, n_classes:at], z[:, at + 1:]], 1)  # the other unknown outputs
    # a word is a class until the shifted output passes its best class (another unknown
    # output on top rejects it whatever the shift)
    need = (best - z[:, at]).numpy()
    if others.shape[1]:
        need[(others.max(1).values > best).numpy()] = -np.inf
    passing = np.sort(need)[::-1][int(rate * len(need))]  # shift past it: the rest pass
    if passing == -np.inf:  # few enough can ever pass: let every one that can
        finite = need[np.isfinite(need)]
        passing = finite.min() - 1.0 if finite.size else 0.0
    return float(np.nextafter(passing, np.inf))


def apply_rule(logits: torch.Tensor, rule: dict, n_classes: int):
    """The classes' calibrated probabilities [N, n_classes] (float64) and, per row, why it
    is unknown ("" when it is not)."""
    # a rule saved before words: one extra output at most, for non-speech
    extra = rule.get("unknown_outputs", [NOT_SPEECH] * bool(rule.get("unknown_output")))
    z = logits.double() / rule["temperature"]
    if rule.get("word_bias"):
        z[:, n_classes + extra.index(NOT_A_WORD)] += rule["word_bias"]
    probs = torch.softmax(z, 1).numpy()
    top = probs.argmax(1)
    probs = probs[:, :n_classes]
    low = probs.max(1) < rule["min_probability"]
    return probs, [extra[k - n_classes] if k >= n_classes else LOW_CONFIDENCE if lo else ""
                   for k, lo in zip(top, low, strict=True)]
