"""Task `speech-forecast`: predict the log-mel frame `shift` steps ahead
(autoregressive predictive coding, L1 loss).

Training: full BPTT per utterance (`bptt=full`), or truncated BPTT(k1, k2) over
the training utterances concatenated into one stream laid out in `lanes` (no
target crosses from one utterance into the next; the carried state does, as in
language modelling over documents). Test: L1 (normalised units) beside copying the
last frame. Served by models/speech_model.py: per utterance its L1 and an
embedding (the mean of the top layer's hidden states).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_loaders.sequences import TEST, TRAIN, VAL
from pipeline.core.params import Config, param
from pipeline.tasks import Evaluation, Objective, in_calls
from pipeline.tasks.speech import common
from pipeline.tasks.speech.common import (
    SHIFT,
    SpeechData,
    SpeechTask,
    apc_targets,
    forecast_l1,
    forecast_padded,
)


@dataclass
class Params(common.Params):
    shift: int = param(SHIFT, "how many frames ahead to predict")


def forecast_tensors(data: SpeechData, which: int, shift: int):
    """A split's padded frames x [N, T, F], lengths [N], and targets y [N, T, F] (NaN
    where none)."""
    return forecast_padded([data.x[i] for i in np.flatnonzero(data.split == which)], shift)


def forecast_stream(data: SpeechData, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """The training utterances end to end, x [T, F] and y [T, F]. Targets never cross
    from one utterance into the next (NaN there); the carried state does, as in
    language modelling over concatenated documents."""
    idx = np.flatnonzero(data.split == TRAIN)
    return (np.concatenate([data.x[i] for i in idx]),
            np.concatenate([apc_targets(data.x[i], shift) for i in idx]))


class SpeechForecastTask(SpeechTask):
    name = "speech-forecast"
    Params = Params
    served = "SpeechForecaster"
    score_name = "l1_logmel"

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        if cfg.task.shift < 1:
            raise ValueError(f"shift must be >= 1, got {cfg.task.shift!r}")

    def network(self, cfg: Config, data: SpeechData) -> dict:
        return {**super().network(cfg, data), "n_out": cfg.task.dim, "shift": cfg.task.shift}

    def objective(self, cfg: Config, data: SpeechData, net) -> Objective:
        import torch

        from data_loaders.sequences import pack_lanes
        from pipeline.core.trainer import masked_l1, tbptt_updates, utterance_updates

        t, shift = cfg.train, cfg.task.shift
        device = next(net.parameters()).device
        xv, _, yv = (a.to(device) for a in forecast_tensors(data, VAL, shift))
        if t.bptt == "truncated":
            sx, sy = forecast_stream(data, shift)
            xl, yl = (torch.as_tensor(a, device=device) for a in pack_lanes([sx], [sy], t.lanes))

            def updates(gen, cursor):
                return tbptt_updates(net, xl, yl, t.k1, t.k2, t.input_noise, cursor)
        else:
            xt, lt, yt = forecast_tensors(data, TRAIN, shift)  # lengths stay on the host
            xt, yt = xt.to(device), yt.to(device)

            def updates(gen, cursor):
                return utterance_updates(net, xt, lt, yt, t.batch_size, gen, t.input_noise,
                                         at_last=False, cursor=cursor)

        return Objective(updates, lambda: {"val_loss": forecast_l1(net, xv, yv)}, masked_l1,
                         "L1 (normalised units)")

    def horizon(self, net, cfg: Config, data: SpeechData):
        import torch
        from torch import nn

        shift = cfg.task.shift

        def example(i):
            x = torch.as_tensor(data.x[i])
            return x[None, :-shift], x[-1]

        return self.memory_horizon(net, data, example, nn.functional.l1_loss, shift)

    def evaluate(self, net, cfg: Config, data: SpeechData) -> Evaluation:
        from pipeline.core.trainer import masked_l1

        x, _, y = forecast_tensors(data, TEST, cfg.task.shift)
        return Evaluation({"model": {"l1": forecast_l1(net, x, y)},
                           "copy_last": {"l1": masked_l1(x, y).item()}}, {})

    def target(self, spec: dict) -> str:
        a = spec["audio"]
        kind = f"logmel{a['n_mels']}" if a["features"] == "logmel" else f"mfcc{a['n_mfcc']}"
        return (f"{kind} at {a['sample_rate']} Hz, window {a['win_ms']:g} ms, hop "
                f"{a['hop_ms']:g} ms, {spec['shift']} frames ahead")

    def validation_scores(self, models: list, cfg: Config, data: SpeechData) -> list[float]:
        """Mean L1 in raw log-mel units (not normalised, so models with other
        normalisers compare) of each served model on the validation files' audio."""
        request = data.requests(VAL)
        return [float(np.mean(np.concatenate([m.raw_l1(part) for part in in_calls(m, request)])))
                for m in models]


TASK = SpeechForecastTask()
