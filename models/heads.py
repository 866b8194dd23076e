"""What a price network's raw outputs mean under each loss, for training and serving alike.

The network ends in one linear layer of `n_out x K` values per step, read as [..., n_out, K]:
- `mse`: K = 1, the point forecast;
- `gaussian`: K = 2, mean and scale (softplus, so > 0) of a normal, trained by its
  negative log-likelihood; its quantiles are mean + scale x Phi^-1(tau);
- `quantile`: K = Q, the quantiles at `quantiles` (ascending), trained by the pinball
  loss; the first is free and each next one adds a softplus, so they never cross.
All in normalised target units (`denormalise` goes back to raw units, where the
quantiles of a volatility are floored at zero). The point forecast is the mean (mse,
gaussian) or the median (quantile: 0.5 must be asked for).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch
from torch.nn import functional

MIN_SCALE = 1e-4  # normalised units: keeps the likelihood finite on a constant stretch


def parse_quantiles(text: str) -> list[float]:
    """"0.05,0.5,0.95" -> [0.05, 0.5, 0.95], checked: numbers strictly between 0 and 1,
    ascending, no repeats."""
    try:
        qs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"quantiles: expected numbers like 0.05,0.5,0.95, got {text!r}") from None
    if not qs or any(not 0 < q < 1 for q in qs) or qs != sorted(set(qs)):
        raise ValueError(f"quantiles: expected ascending numbers strictly between 0 and 1, "
                         f"each once, got {text!r}")
    return qs


def width(loss: str, quantiles: list[float]) -> int:
    """K, the raw outputs per target column."""
    return {"mse": 1, "gaussian": 2, "quantile": len(quantiles)}[loss]


def quantile_name(column: str, q: float) -> str:
    """volatility_h5, 0.05 -> volatility_h5_q5 (the percent, as short as it goes)."""
    return f"{column}_q{round(100 * q, 6):g}"


def _split(raw: torch.Tensor, k: int) -> torch.Tensor:
    return raw.reshape(*raw.shape[:-1], raw.shape[-1] // k, k)  # [..., n_out x K] -> [.., n_out, K]


def gaussian(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and scale [..., n_out] of raw [..., n_out x 2]."""
    pair = _split(raw, 2)
    return pair[..., 0], functional.softplus(pair[..., 1]) + MIN_SCALE


def quantiles_of(raw: torch.Tensor, k: int) -> torch.Tensor:
    """Non-crossing quantiles [..., n_out, K] of raw [..., n_out x K]."""
    parts = _split(raw, k)
    steps = functional.softplus(parts[..., 1:])
    return torch.cat([parts[..., :1], parts[..., :1] + steps.cumsum(-1)], -1)


def loss_fn(loss: str, quantiles: list[float]):
    """The training loss of raw outputs against targets [..., n_out] (NaN: no target)."""
    if loss == "mse":
        def mse(raw, target):
            keep = ~torch.isnan(target)
            return (raw[keep] - target[keep]).pow(2).mean()
        return mse
    if loss == "gaussian":
        def nll(raw, target):
            mean, scale = gaussian(raw)
            keep = ~torch.isnan(target)
            z = (target[keep] - mean[keep]) / scale[keep]
            return (scale[keep].log() + 0.5 * z * z).mean() + 0.5 * math.log(2 * math.pi)
        return nll
    taus = torch.tensor(quantiles)

    def pinball(raw, target):
        q = quantiles_of(raw, len(quantiles))
        keep = ~torch.isnan(target)
        err = target[keep].unsqueeze(-1) - q[keep]  # [N, Q]
        return torch.maximum(taus * err, (taus - 1) * err).mean()
    return pinball


def denormalise(raw: np.ndarray, spec: dict, y_norm) -> dict[str, np.ndarray]:
    """Raw outputs [N, n_out x K] -> raw units: `point` [N, n_out], and for a
    distributional loss `quantiles` [N, n_out, Q] (at spec["quantiles"]) and, for
    gaussian, `scale` [N, n_out]."""
    loss, qs = spec.get("loss", "mse"), spec.get("quantiles", [])
    mean, std = np.asarray(y_norm.mean_), np.asarray(y_norm.std_)
    t = torch.as_tensor(raw, dtype=torch.float32)
    if loss == "mse":
        return {"point": raw * std + mean}
    # a volatility is never below zero: the quantiles of a normal (or a free first
    # quantile) that fall below are put at zero, which keeps them ordered
    floor = 0.0 if spec.get("target") == "volatility" else -np.inf
    if loss == "gaussian":
        mu, scale = (v.numpy().astype(np.float64) for v in gaussian(t))
        z = np.array(spec.get("calibrated_z") or normal_z(qs))
        quant = mu[..., None] + scale[..., None] * z
        return {"point": mu * std + mean, "scale": scale * std,
                "quantiles": np.maximum(quant * std[:, None] + mean[:, None], floor)}
    quant = quantiles_of(t, len(qs)).numpy().astype(np.float64) * std[:, None] + mean[:, None]
    return {"point": quant[..., qs.index(0.5)], "quantiles": np.maximum(quant, floor)}


def normal_z(quantiles: list[float]) -> list[float]:
    """The standard normal's quantile at each level: a gaussian head's z, uncalibrated."""
    return [NormalDist().inv_cdf(q) for q in quantiles]


def rescale(values: dict[str, np.ndarray], scale: np.ndarray) -> dict[str, np.ndarray]:
    """Forecasts of a scale-free model [N, ...] back in the series' units: times each
    forecast's trailing volatility `scale` [N] (> 0, so quantiles keep their order)."""
    return {k: v * scale.reshape(-1, *[1] * (v.ndim - 1)) for k, v in values.items()}


def columns(spec: dict, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The response columns: each point forecast, then its scale and quantiles."""
    out = {}
    for j, name in enumerate(spec["outputs"]):
        out[name] = values["point"][:, j]
        if "scale" in values:
            out[f"{name}_scale"] = values["scale"][:, j]
        for k, q in enumerate(spec.get("quantiles", []) if "quantiles" in values else []):
            out[quantile_name(name, q)] = values["quantiles"][:, j, k]
    return out


def column_names(spec: dict) -> list[str]:
    """The names `columns` gives, from the spec alone (the signature's outputs)."""
    loss, qs, names = spec.get("loss", "mse"), spec.get("quantiles", []), []
    for name in spec["outputs"]:
        names.append(name)
        names += [f"{name}_scale"] if loss == "gaussian" else []
        names += [quantile_name(name, q) for q in qs] if loss != "mse" else []
    return names
