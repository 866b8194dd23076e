"""The networks: stacked rnn/lstm/gru with a regression head, and the MLP baseline.

Every network maps inputs [B, T, F] and an optional carried state to outputs
[B, T, out] and the next state, so the trainer treats them alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from data_loaders.sequences import windows

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
NORMS = ("none", "layer", "batch")
INITS = ("orthogonal", "xavier", "gaussian", "uniform", "zeros")


class SequenceBatchNorm(nn.Module):
    """Batch norm over batch and time together (sequence-wise, as in Deep Speech 2)."""

    def __init__(self, size: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, f = h.shape
        return self.bn(h.reshape(b * t, f)).reshape(b, t, f)  # [B*T, F] -> [B, T, F]


def _norm(kind: str, size: int) -> nn.Module:
    return {"none": nn.Identity, "layer": nn.LayerNorm, "batch": SequenceBatchNorm}[kind](size)


class RecurrentRegressor(nn.Module):
    """`layers` single-layer cells; between two layers: norm, then dropout.

    bidirectional (whole utterances only, never forecasting): each layer also reads
    the sequence backwards, from each sequence's own end when `lengths` are given.
    `readout` is how `pooled` turns a sequence's outputs into one: at its last step,
    or their mean over its steps."""

    def __init__(self, n_features: int, n_outputs: int, cell: str = "lstm", hidden: int = 32,
                 layers: int = 1, dropout: float = 0.0, norm: str = "none",
                 bidirectional: bool = False, readout: str = "last"):
        super().__init__()
        width = hidden * (1 + bidirectional)
        sizes = [n_features] + [width] * layers
        self.cells = nn.ModuleList(CELLS[cell](sizes[i], hidden, batch_first=True,
                                               bidirectional=bidirectional)
                                   for i in range(layers))
        self.norms = nn.ModuleList(_norm(norm, width) for _ in range(layers - 1))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_outputs)
        self.bidirectional, self.readout = bidirectional, readout

    def forward(self, x: torch.Tensor, state: list | None = None,
                lengths: torch.Tensor | None = None):
        state = state or [None] * len(self.cells)
        h, new_state = x, []
        for i, rnn in enumerate(self.cells):
            h, s = self._layer(rnn, h, state[i], lengths)
            new_state.append(s)
            if i < len(self.norms):
                h = self.dropout(self.norms[i](h))
        self.top_hidden = h  # [B, T, width], kept for diagnostics and embeddings
        return self.head(self.dropout(h)), new_state

    def _layer(self, rnn: nn.Module, h: torch.Tensor, state, lengths):
        if not self.bidirectional or lengths is None:  # forwards only: padding comes after
            return rnn(h, state)
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, s = rnn(packed, state)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                total_length=h.shape[1])[0], s

    def pooled(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One output per sequence [B, out] of zero-padded x [B, T, F]."""
        out = self(x, lengths=lengths)[0]
        return last_step(out, lengths) if self.readout == "last" else _masked_mean(out, lengths)


class MLPRegressor(nn.Module):
    """The feed-forward baseline: a flattened window [B, L*F] -> hidden layers -> out.
    Trained by plain backpropagation; it has no state, so the output is one step."""

    def __init__(self, n_features: int, n_outputs: int, lookback: int, hidden: int = 32,
                 layers: int = 1, dropout: float = 0.0):
        super().__init__()
        sizes = [n_features * lookback] + [hidden] * layers
        blocks = []
        for i in range(layers):
            blocks += [nn.Linear(sizes[i], sizes[i + 1]), nn.Tanh(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden, n_outputs)
        self.lookback = lookback

    def forward(self, x: torch.Tensor, state=None):
        if x.shape[1] != self.lookback:
            raise ValueError(f"mlp: expected windows of {self.lookback} steps, got {x.shape[1]}")
        return self.head(self.body(x.flatten(1))).unsqueeze(1), None  # [B, 1, out]


def init_weights(model: nn.Module, scheme: str) -> None:
    """Weight matrices by `scheme`, biases to zero. For recurrent weights
    (weight_hh) `orthogonal` applies per gate block, which keeps each gate's
    recurrence norm-preserving at the start."""
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")
    for name, p in model.named_parameters():
        if p.dim() < 2 or "norm" in name:
            if "bias" in name:
                nn.init.zeros_(p)
            continue
        if scheme == "zeros":
            nn.init.zeros_(p)
        elif scheme == "gaussian":
            nn.init.normal_(p, 0.0, 1.0 / math.sqrt(p.shape[1]))
        elif scheme == "uniform":
            bound = 1.0 / math.sqrt(p.shape[1])
            nn.init.uniform_(p, -bound, bound)
        elif scheme == "xavier" or "weight_hh" not in name:
            nn.init.xavier_uniform_(p)
        else:
            for block in p.data.split(p.shape[1]):
                nn.init.orthogonal_(block)


def build_model(cfg: dict, n_features: int, n_outputs: int) -> nn.Module:
    """A network from the model part of the config (a plain dict, as stored with the model)."""
    kwargs = dict(hidden=cfg["hidden"], layers=cfg["layers"], dropout=cfg["dropout"])
    if cfg["cell"] == "mlp":
        model = MLPRegressor(n_features, n_outputs, lookback=cfg["lookback"], **kwargs)
    else:
        model = RecurrentRegressor(n_features, n_outputs, cell=cfg["cell"], norm=cfg["norm"],
                                   bidirectional=cfg.get("bidirectional", False),
                                   readout=cfg.get("readout", "last"), **kwargs)
    init_weights(model, cfg["init"])
    return model


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device; "
                         "use device=auto or device=cpu")
    return torch.device(device)


@torch.no_grad()
def forecast_at(model: nn.Module, x: torch.Tensor, anchors: np.ndarray, stateful: bool,
            lookback: int, chunk: int = 2048) -> torch.Tensor:
    """Predictions [N, out] at the anchors of one series x [T, F]: from the window of
    `lookback` steps ending there, or (stateful) from one pass over the whole series."""
    model.eval()
    if stateful:
        out, _ = model(x[None])
        return out[0, torch.as_tensor(anchors)]
    wins = windows(x, lookback)
    starts = torch.as_tensor(anchors - lookback + 1)
    if len(starts) == 0:
        return torch.empty(0, model.head.out_features)
    return torch.cat([model(wins[starts[i:i + chunk]])[0][:, -1]
                      for i in range(0, len(starts), chunk)])


def pad(xs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad after the end: [T_i, F] each -> x [N, T_max, F], lengths [N]. A
    unidirectional RNN read at step length-1 never sees the padding, and a
    bidirectional one reads each sequence backwards from its own end, so padding
    cannot change a prediction."""
    lengths = torch.tensor([len(x) for x in xs])
    out = torch.zeros(len(xs), int(lengths.max()), xs[0].shape[1])
    for i, x in enumerate(xs):
        out[i, : len(x)] = torch.as_tensor(x)
    return out, lengths


def last_step(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return out[torch.arange(len(out)), lengths - 1]  # [B, T, C] -> [B, C] at each last frame


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor,
           chunk: int = 256) -> torch.Tensor:
    """Per sequence, the pooled output [N, C]."""
    model.eval()
    parts = []
    for i in range(0, len(x), chunk):
        n = lengths[i:i + chunk]
        parts.append(model.pooled(x[i:i + chunk, : int(n.max())], n))
    return torch.cat(parts)


def _masked_mean(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, T, H] -> [B, H], the mean over each sequence's own steps."""
    lengths = lengths.to(h.device)
    mask = torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]
    return (h * mask[..., None]).sum(1) / lengths[:, None]
