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
                lengths: torch.Tensor | None = None, with_hidden: bool = False):
        """(outputs [B, T, out], new state), and the top layer's hidden states [B, T,
        width] with `with_hidden` (embeddings). Returned, never kept on the module: a
        server would hold its largest request's hidden states until the next one."""
        state = state or [None] * len(self.cells)
        h, new_state = x, []
        for i, rnn in enumerate(self.cells):
            h, s = self._layer(rnn, h, state[i], lengths)
            new_state.append(s)
            if i < len(self.norms):
                h = self.dropout(self.norms[i](h))
        out = self.head(self.dropout(h))
        return (out, new_state, h) if with_hidden else (out, new_state)

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
        return read_out(self(x, lengths=lengths)[0], lengths, self.readout)


class Ensemble(nn.Module):
    """Recurrent networks side by side on the same padded input, their outputs averaged.
    Each reads the input as given (view `global`) or normalised per utterance by its own
    mean and std (`utterance`): networks that hear the audio differently make different
    mistakes, and their average makes fewer. `each=True` (training) returns every
    member's outputs stacked on a last axis, so that each learns from its own loss."""

    def __init__(self, members: list[RecurrentRegressor], views: list[str]):
        super().__init__()
        self.members, self.views = nn.ModuleList(members), list(views)
        self.bidirectional, self.readout = members[0].bidirectional, members[0].readout

    def forward(self, x: torch.Tensor, state=None, lengths: torch.Tensor | None = None,
                each: bool = False):
        n = torch.full((len(x),), x.shape[1]) if lengths is None else lengths
        seen = {"global": x, "utterance": utterance_cmvn(x, n) if "utterance" in self.views
                else None}  # each view once, however many networks read it
        outs = torch.stack([m(seen[v], lengths=lengths)[0]
                            for m, v in zip(self.members, self.views, strict=True)], -1)
        return (outs if each else outs.mean(-1)), None

    pooled = RecurrentRegressor.pooled


def utterance_cmvn(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Padded frames [B, T, F] normalised per utterance by the mean and std of its own
    frames (padding stays zero)."""
    valid = (torch.arange(x.shape[1], device=x.device)[None]
             < lengths.to(x.device)[:, None])[..., None]
    n = lengths.to(x.device)[:, None, None].to(x.dtype)
    mean = (x * valid).sum(1, keepdim=True) / n
    std = ((((x - mean) * valid) ** 2).sum(1, keepdim=True) / n).sqrt()
    return (x - mean) / torch.where(std > 1e-8, std, 1.0) * valid


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
    views = cfg.get("ensemble") or []  # speech-classify: one network per view
    if cfg["cell"] == "mlp":
        model = MLPRegressor(n_features, n_outputs, lookback=cfg["lookback"], **kwargs)
    else:
        def recurrent():
            return RecurrentRegressor(n_features, n_outputs, cell=cfg["cell"], norm=cfg["norm"],
                                      bidirectional=cfg.get("bidirectional", False),
                                      readout=cfg.get("readout", "last"), **kwargs)

        model = Ensemble([recurrent() for _ in views], views) if views else recurrent()
    init_weights(model, cfg["init"])
    return model


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device; "
                         "use device=auto or device=cpu")
    return torch.device(device)


WINDOWS_PER_CALL = 2048  # windows per network call: bounds memory whatever the request
STEPS_PER_CALL = 4096  # time steps per call of a stateful pass, its state carried over


@torch.no_grad()
def forecast_at(model: nn.Module, x: torch.Tensor, anchors: np.ndarray, stateful: bool,
                lookback: int) -> torch.Tensor:
    """Predictions [N, out] at the anchors of one series x [T, F] (see `forecasts`)."""
    return forecasts(model, [x], [anchors], stateful, lookback)[0]


@torch.no_grad()
def forecasts(model: nn.Module, xs: list[torch.Tensor], anchors: list[np.ndarray],
              stateful: bool, lookback: int) -> list[torch.Tensor]:
    """Predictions [N_i, out] at the anchors of each series xs[i] [T_i, F], all series
    batched together: from the window of `lookback` steps ending at each anchor, or
    (stateful) from one pass over each whole series. Work goes in bounded chunks, so
    time grows linearly with the history and memory stays flat."""
    model.eval()
    if stateful:
        return _stateful(model, xs, anchors)
    series = torch.cat(xs)  # windows are taken inside each series: no anchor < lookback - 1
    offsets = np.cumsum([0] + [len(x) for x in xs[:-1]])
    starts = torch.as_tensor(np.concatenate(
        [np.asarray(a, np.int64) + o - lookback + 1 for a, o in zip(anchors, offsets,
                                                                   strict=True)]))
    out = torch.empty(len(starts), model.head.out_features, device=series.device)
    if len(starts) == 0:
        return list(out.split([0] * len(anchors)))
    wins = windows(series, lookback)
    for i in range(0, len(starts), WINDOWS_PER_CALL):
        out[i:i + WINDOWS_PER_CALL] = model(wins[starts[i:i + WINDOWS_PER_CALL]])[0][:, -1]
    return list(out.split([len(a) for a in anchors]))


def _stateful(model: nn.Module, xs: list[torch.Tensor], anchors: list[np.ndarray]):
    """One pass over all series side by side, STEPS_PER_CALL steps at a time. Series run
    longest first, so those still running are always the first rows of the batch."""
    order = sorted(range(len(xs)), key=lambda i: -len(xs[i]))
    lengths = [len(xs[i]) for i in order]
    outs: list[list[torch.Tensor]] = [[] for _ in xs]
    state = None
    for t in range(0, lengths[0], STEPS_PER_CALL):
        active = sum(n > t for n in lengths)
        chunk = torch.zeros(active, min(STEPS_PER_CALL, lengths[0] - t), xs[0].shape[1],
                            device=xs[0].device)
        for row, i in enumerate(order[:active]):
            part = xs[i][t:t + STEPS_PER_CALL]
            chunk[row, :len(part)] = part
        out, state = model(chunk, _first_rows(state, active))
        for row, i in enumerate(order[:active]):
            a = anchors[i][(anchors[i] >= t) & (anchors[i] < t + STEPS_PER_CALL)] - t
            outs[i].append(out[row, torch.as_tensor(a)])
    return [torch.cat(o) if o else torch.empty(0, model.head.out_features) for o in outs]


def _first_rows(state, n: int):
    """The carried state of the first n sequences of the batch (layers of h or (h, c))."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state[:, :n]
    return type(state)(_first_rows(s, n) for s in state)


def state_size(model: nn.Module) -> int:
    """Numbers in one sequence's carried state: every layer's h, and c for an LSTM."""
    return sum(c.hidden_size * (2 if isinstance(c, nn.LSTM) else 1) for c in model.cells)


def state_bounds(model: nn.Module) -> np.ndarray:
    """The most each number of a carried state (`state_size`) can be: |h| <= 1 (tanh, or a
    mix of tanh outputs); an LSTM's cell c has no bound but the steps seen (inf here)."""
    return np.concatenate([[1.0] * c.hidden_size + (
        [np.inf] * c.hidden_size if isinstance(c, nn.LSTM) else []) for c in model.cells])


def _flat(state) -> torch.Tensor:
    """Layers of h [1, B, H] (or (h, c)) -> [B, state_size]."""
    parts = [p for s in state for p in (s if isinstance(s, tuple) else (s,))]
    return torch.cat([p[0] for p in parts], dim=1)


def _layers(model: nn.Module, flat: torch.Tensor) -> list:
    """[B, state_size] -> the state `model` takes (inverse of _flat)."""
    state, at = [], 0
    for c in model.cells:
        parts = []
        for _ in range(2 if isinstance(c, nn.LSTM) else 1):
            parts.append(flat[:, at:at + c.hidden_size].unsqueeze(0).contiguous())
            at += c.hidden_size
        state.append(tuple(parts) if len(parts) == 2 else parts[0])
    return state


def carry(model: nn.Module, xs: list[torch.Tensor], states: list[torch.Tensor | None]
          ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs [T_i, out] at every step of each series xs[i] [T_i, F] (T_i >= 1), each
    from its carried state (None: zeros), and the state after its last step
    [state_size]. Series run longest first; a call ends where the shortest running
    series ends, so every state is read at its own series' last step."""
    order = sorted(range(len(xs)), key=lambda i: -len(xs[i]))
    lengths = [len(xs[i]) for i in order]
    h = torch.stack([torch.zeros(state_size(model)) if states[i] is None else states[i]
                     for i in order])  # [B, state_size], in `order`
    outs: list[list[torch.Tensor]] = [[] for _ in xs]
    t = 0
    with torch.no_grad():
        while t < lengths[0]:
            active = sum(n > t for n in lengths)
            end = min(t + STEPS_PER_CALL, lengths[active - 1])
            out, state = model(torch.stack([xs[i][t:end] for i in order[:active]]),
                               _layers(model, h[:active]))
            h[:active] = _flat(state)
            for row, i in enumerate(order[:active]):
                outs[i].append(out[row])
            t = end
    final = dict(zip(order, h, strict=True))
    return [torch.cat(o) for o in outs], [final[i] for i in range(len(xs))]


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


FRAMES_PER_CALL = 32_768  # padded frames per network call: bounds a request's memory


def by_length(lengths: list[int], budget: int = FRAMES_PER_CALL) -> list[list[int]]:
    """Indices in groups, shortest sequences first, each group padded to its longest
    within `budget` frames (rows x longest; one row at least): little padding, flat
    memory whatever the request."""
    groups: list[list[int]] = [[]]
    for i in np.argsort(lengths, kind="stable").tolist():
        if groups[-1] and (len(groups[-1]) + 1) * lengths[i] > budget:
            groups.append([])
        groups[-1].append(i)
    return groups if groups[0] else []


@torch.no_grad()
def logits_of(model: nn.Module, xs: list[np.ndarray]) -> torch.Tensor:
    """The pooled output [N, C] of sequences xs[i] [T_i, F], in groups by length."""
    out: list = [None] * len(xs)
    for group in by_length([len(x) for x in xs]):
        for i, row in zip(group, logits(model, *pad([xs[i] for i in group])), strict=True):
            out[i] = row
    return torch.stack(out)


def read_out(out: torch.Tensor, lengths: torch.Tensor, readout: str) -> torch.Tensor:
    """Outputs [B, T, C] of padded sequences -> one per sequence [B, C]: at its last step
    (`last`) or the mean over its steps (`mean`)."""
    return last_step(out, lengths) if readout == "last" else _masked_mean(out, lengths)


def _masked_mean(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, T, H, ...] -> [B, H, ...], the mean over each sequence's own steps."""
    lengths = lengths.to(h.device)
    mask = torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]
    trail = [1] * (h.dim() - 2)
    return (h * mask.view(*mask.shape, *trail)).sum(1) / lengths.view(-1, *trail)
