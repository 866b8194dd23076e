"""Memory horizon: how far back does the gradient reach?

For the loss at the last step of a window, the norm of its gradient with respect
to the recurrent state k steps back (every layer's h, and c for an LSTM), for
k = 0..K, averaged over validation windows. The horizon is the largest k where
that norm is still at least 1 % of its value at k = 0. Every training run logs it
(`memory_horizon`); a sweep over `cell` compares it across cells.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from data_loaders.sequences import VAL
from models.networks import RecurrentRegressor

THRESHOLD = 0.01


def _tensors(state) -> list[torch.Tensor]:
    return [t for layer in state for t in (layer if isinstance(layer, tuple) else (layer,))]


def state_gradient_norms(net: RecurrentRegressor, x: torch.Tensor, target: torch.Tensor,
                         max_k: int, loss_fn=nn.functional.mse_loss) -> np.ndarray:
    """x [1, T, F], target [out] -> norms [K+1] of d loss_T / d state_{T-1-k}, the loss
    being loss_fn(prediction at the last step [out], target)."""
    net.eval()  # no dropout; batch norm on its running statistics
    steps = x.shape[1]
    k_max = min(max_k, steps - 1)
    first = steps - k_max - 1
    with torch.no_grad():
        state = net(x[:, :first])[1] if first > 0 else None
    states = []
    with torch.enable_grad():
        for t in range(first, steps):  # one step at a time, to keep every state
            _, state = net(x[:, t:t + 1], state)
            states.append(_tensors(state))
        # The last prediction from the returned top-layer state itself (in eval mode the
        # same value as the output sequence's last step), so k = 0 has a gradient path.
        top = state[-1][0] if isinstance(state[-1], tuple) else state[-1]  # [1, 1, H]
        loss = loss_fn(net.head(top[0, 0]), target)
        flat = [t for s in states for t in s]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    per_step, i = [], 0
    for s in states:
        sq = sum(float(g.pow(2).sum()) for g in grads[i:i + len(s)] if g is not None)
        per_step.append(np.sqrt(sq))
        i += len(s)
    return np.array(per_step[::-1])  # index k: k steps back from the last


def memory_horizon(norms: np.ndarray, threshold: float = THRESHOLD) -> int:
    """The largest k whose gradient norm is still >= threshold x the norm at k = 0."""
    if norms[0] == 0:
        return 0
    return int(np.flatnonzero(norms >= threshold * norms[0]).max())


def validation_horizon(net: RecurrentRegressor, streams, lookback: int,
                       loss_fn=nn.functional.mse_loss,
                       windows: int = 16) -> tuple[np.ndarray, int]:
    """Mean norm curve over up to `windows` validation windows of `lookback` steps,
    spread evenly over the validation split, and its horizon."""
    pairs = [(x, y, a) for x, y, a in zip(streams.x, streams.y, streams.anchors(VAL, lookback),
                                          strict=True) for a in a]
    pick = np.linspace(0, len(pairs) - 1, min(windows, len(pairs))).astype(int)
    curves = [state_gradient_norms(net.cpu(), pairs[i][0][pairs[i][2] - lookback + 1:
                                                          pairs[i][2] + 1][None].cpu(),
                                   pairs[i][1][pairs[i][2]].cpu(), lookback - 1, loss_fn)
              for i in pick]
    mean = np.mean(curves, axis=0)
    return mean, memory_horizon(mean)
