"""The MLflow pyfuncs that serve speech models from audio, not features.

Stored as models/served.py stores every model; the classes come from code
(`speech_classify_entry.py`, `speech_forecast_entry.py`). Feature extraction
and normalisation run inside, with the same functions training used.

Request: one row per utterance, either `audio` (the file's bytes: WAV, FLAC or
OGG; base64 over REST) or `samples` (array of floats in [-1, 1]) with
`sample_rate` (Hz); optional `utterance_id`.
Response, speech-classify: `utterance_id`, `label` (a class, or "unknown"),
`probability` (of the top class, calibrated), `reason` (why "unknown": silent, too
short, low confidence, or like the non-speech it was trained to reject; empty
otherwise) and one `p_{class}` column per class. speech-forecast: `utterance_id`, `l1` (the
mean absolute error of predicting each frame `shift` steps ahead, normalised
log-mel units) and `embedding` (the mean of the top layer's hidden states).
Limits: MAX_ROWS utterances per request, MAX_SECONDS of audio each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from data_loaders import audio
from data_loaders.sequences import Normaliser
from models.calibration import UNKNOWN, apply_rule
from models.networks import logits, pad
from models.served import ServedModel, bad, missing

MAX_ROWS = 256
MAX_SECONDS = 60.0
INPUTS = Schema([ColSpec(DataType.binary, "audio", required=False),
                 ColSpec(Array(DataType.double), "samples", required=False),
                 ColSpec(DataType.long, "sample_rate", required=False),
                 ColSpec(DataType.string, "utterance_id", required=False)])


class AudioModel(ServedModel):
    """Audio rows -> frames, normalised as in training (global mean/std or per
    utterance)."""

    unit = "utterance"
    max_rows = MAX_ROWS
    needs = ("librosa",)

    def setup(self) -> None:
        self.settings = audio.FeatureSettings(**self.spec["audio"])
        self.norm = Normaliser.from_dict(self.normaliser) if self.normaliser else None

    def _samples(self, row: dict, i: int) -> np.ndarray:
        """Samples at the model's rate, from `samples` + `sample_rate`."""
        import librosa

        rate = row.get("sample_rate")
        if missing(rate) or not float(rate).is_integer() or float(rate) <= 0:
            raise bad(f"row {i}, column 'sample_rate': must be a positive whole number of Hz "
                      f"when 'samples' is sent, got {rate!r}")
        try:
            samples = np.asarray(row["samples"], dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise bad(f"row {i}, column 'samples': expected an array of numbers") from None
        if len(samples) > MAX_SECONDS * float(rate):
            raise bad(f"row {i}, column 'samples': longer than the {MAX_SECONDS:g} s limit")
        if int(rate) != self.settings.sample_rate and len(samples):
            samples = librosa.resample(samples, orig_sr=int(rate),
                                       target_sr=self.settings.sample_rate)
        return samples

    def frames(self, row: dict, i: int, lenient: bool = False):
        """Raw (unnormalised) feature frames [T, F] of one row. Audio that cannot make an
        utterance (silent, too short) is a request error, or with `lenient` the
        reason, returned instead of frames."""
        s = self.settings
        try:
            if not missing(row.get("audio")):
                data = row["audio"]
                if not isinstance(data, bytes | bytearray):
                    raise bad(f"row {i}, column 'audio': expected the file's bytes "
                              f"(base64 over REST), got {type(data).__name__}")
                samples = audio.decode(bytes(data), s.sample_rate)
                if len(samples) > MAX_SECONDS * s.sample_rate:
                    raise bad(f"row {i}, column 'audio': longer than the {MAX_SECONDS:g} s "
                              "limit")
                where = "audio"
            elif not missing(row.get("samples")) and np.size(row.get("samples")):
                samples, where = self._samples(row, i), "samples"
            else:
                raise bad(f"row {i}: send 'audio' (the file's bytes) or 'samples' with "
                          "'sample_rate'")
        except audio.AudioError as err:
            raise bad(f"row {i}, column 'audio': "
                      f"{str(err).removeprefix('audio bytes: ')}") from None
        cut, why = audio.trimmed(samples, s)
        if why and lenient and why.startswith(("silent", "too short")):
            return why.split(":")[0]  # no utterance in it: "unknown", not a broken request
        if why:
            raise bad(f"row {i}, column '{where}': {why}")
        return audio.frames(cut, s)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        return self.norm.transform(x) if self.norm else audio.utterance_cmvn(x)

    def batch(self, model_input, lenient: bool = False) -> tuple[list, list[str]]:
        """Raw frames (see `frames`) and ids of every row of a request."""
        rows = self.rows(model_input)
        ids = [str(i) if missing(r.get("utterance_id")) else str(r["utterance_id"])
               for i, r in enumerate(rows)]
        return [self.frames(r, i, lenient) for i, r in enumerate(rows)], ids


class SpeechClassifier(AudioModel):
    entry = "speech_classify_entry.py"

    @staticmethod
    def signature(spec: dict) -> ModelSignature:
        outputs = [ColSpec(DataType.string, "utterance_id"), ColSpec(DataType.string, "label"),
                   ColSpec(DataType.double, "probability"), ColSpec(DataType.string, "reason")]
        outputs += [ColSpec(DataType.double, f"p_{c}") for c in spec["classes"]]
        return ModelSignature(INPUTS, Schema(outputs))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        raw, ids = self.batch(model_input, lenient=True)
        classes = self.spec["classes"]
        probs = np.full((len(raw), len(classes)), 1 / len(classes))  # no audio: no opinion
        reasons = [f if isinstance(f, str) else "" for f in raw]
        if ok := [i for i, f in enumerate(raw) if not isinstance(f, str)]:
            x, lengths = pad([self.normalise(raw[i]) for i in ok])
            out = logits(self.net, x, lengths)
            if not torch.isfinite(out).all():
                raise bad("the model produced non-finite outputs")
            probs[ok], why = self.probabilities(out)
            for i, w in zip(ok, why, strict=True):
                reasons[i] = w
        best = probs.argmax(1)
        out = pd.DataFrame({"utterance_id": ids,
                            "label": [UNKNOWN if r else classes[b]
                                      for r, b in zip(reasons, best, strict=True)],
                            "probability": probs[np.arange(len(best)), best],
                            "reason": reasons})
        for j, c in enumerate(classes):
            out[f"p_{c}"] = probs[:, j]
        return out

    def probabilities(self, out: torch.Tensor):
        """Calibrated probabilities and unknown reasons by the stored rule (models saved
        before it: plain softmax, never unknown)."""
        if rule := self.spec.get("unknown"):
            return apply_rule(out, rule, len(self.spec["classes"]))
        return torch.softmax(out, 1).numpy().astype(np.float64), [""] * len(out)


class SpeechForecaster(AudioModel):
    entry = "speech_forecast_entry.py"

    @staticmethod
    def signature(spec: dict) -> ModelSignature:
        return ModelSignature(INPUTS, Schema([ColSpec(DataType.string, "utterance_id"),
                                              ColSpec(DataType.double, "l1"),
                                              ColSpec(Array(DataType.double), "embedding")]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        raw, ids = self.batch(model_input)
        x, lengths = self._check([self.normalise(f) for f in raw])
        with torch.no_grad():
            out, _ = self.net(x)
        hidden = self.net.top_hidden  # [N, T, H]
        shift, l1, emb = self.spec["shift"], [], []
        for i, n in enumerate(lengths.tolist()):
            l1.append(float((out[i, : n - shift] - x[i, shift:n]).abs().mean()))
            emb.append(hidden[i, :n].mean(0).double().tolist())
        if not np.isfinite(l1).all() or not np.isfinite(np.concatenate(emb)).all():
            raise bad("the model produced a non-finite error or embedding")
        return pd.DataFrame({"utterance_id": ids, "l1": l1, "embedding": emb})

    def raw_l1(self, model_input) -> np.ndarray:
        """Per utterance, the L1 error in raw feature units (log-mel, not normalised), so
        models with other normalisers compare on the same scale."""
        raw, _ = self.batch(model_input)
        x, lengths = self._check([self.normalise(f) for f in raw])
        with torch.no_grad():
            out = self.net(x)[0].numpy()
        shift, errors = self.spec["shift"], []
        for i, (f, n) in enumerate(zip(raw, lengths.tolist(), strict=True)):
            pred = out[i, : n - shift]
            if self.norm:
                pred = self.norm.inverse_transform(pred)
            else:  # per-utterance CMVN: undo with this utterance's own mean and std
                std = f.std(axis=0)
                pred = pred * np.where(std > 1e-8, std, 1.0) + f.mean(axis=0)
            errors.append(float(np.abs(pred - f[shift:n]).mean()))
        return np.array(errors)

    def _check(self, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        shift = self.spec["shift"]
        short = [i for i, f in enumerate(frames) if len(f) <= shift]
        if short:
            raise bad(f"row {short[0]}: {len(frames[short[0]])} frames leave nothing to "
                      f"predict {shift} frames ahead")
        self.net.eval()
        return pad(frames)


def audio_request(paths: list[Path], ids: list[str]) -> pd.DataFrame:
    """The request these models take for audio files: each file's bytes and its id."""
    return pd.DataFrame({"audio": [p.read_bytes() for p in paths], "utterance_id": ids})
