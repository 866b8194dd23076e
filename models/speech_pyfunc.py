"""The MLflow pyfunc that serves a speech model from audio, not features.

Stored as plain files, no pickle: `weights.pt` (state_dict), `model.json` (the
network, the classes, the feature settings and the normalisation) and
`normaliser.json`; the class comes from code (`speech_entry.py`). Feature
extraction runs inside, with the same functions training used.

Request: one row per utterance, either `audio` (the file's bytes: WAV, FLAC or
OGG; base64 over REST) or `samples` (array of floats in [-1, 1]) with
`sample_rate` (Hz); optional `utterance_id`.
Response, task=classify: `utterance_id`, `label`, `probability` (of that label)
and one `p_{class}` column per class. task=forecast: `utterance_id`, `l1` (the
mean absolute error of predicting each frame `shift` steps ahead, normalised
log-mel units) and `embedding` (the mean of the top layer's hidden states).
Limits: MAX_ROWS utterances per request, MAX_SECONDS of audio each.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from data_loaders import audio
from data_loaders.sequences import Normaliser
from models.artifacts import log_pyfunc, write_artifacts
from models.networks import build_model, logits, pad

MAX_ROWS = 256
MAX_SECONDS = 60.0


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _missing(value) -> bool:
    return value is None or (np.isscalar(value) and pd.isna(value))


class SpeechModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.load(context.artifacts)

    def load(self, artifacts: dict) -> SpeechModel:
        self.spec = json.loads(Path(artifacts["config"]).read_text())
        self.settings = audio.FeatureSettings(**self.spec["audio"])
        norm = json.loads(Path(artifacts["normaliser"]).read_text())
        self.norm = Normaliser.from_dict(norm) if norm else None
        outputs = (len(self.spec["classes"]) if self.spec["task"] == "classify"
                   else self.settings.dim)
        self.net = build_model(self.spec["model"], self.settings.dim, outputs)
        self.net.load_state_dict(torch.load(artifacts["weights"], map_location="cpu",
                                            weights_only=True))
        self.net.eval()
        return self

    def _samples(self, row: dict, i: int) -> np.ndarray:
        """Samples at the model's rate, from `samples` + `sample_rate`."""
        import librosa

        rate = row.get("sample_rate")
        if _missing(rate) or not float(rate).is_integer() or float(rate) <= 0:
            raise _bad(f"row {i}, column 'sample_rate': must be a positive whole number of Hz "
                       f"when 'samples' is sent, got {rate!r}")
        try:
            samples = np.asarray(row["samples"], dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise _bad(f"row {i}, column 'samples': expected an array of numbers") from None
        if not np.isfinite(samples).all():
            raise _bad(f"row {i}, column 'samples': contains NaN or infinity")
        if len(samples) > MAX_SECONDS * float(rate):
            raise _bad(f"row {i}, column 'samples': longer than the {MAX_SECONDS:g} s limit")
        if int(rate) != self.settings.sample_rate and len(samples):
            samples = librosa.resample(samples, orig_sr=int(rate),
                                       target_sr=self.settings.sample_rate)
        return samples

    def _features(self, row: dict, i: int) -> np.ndarray:
        s = self.settings
        try:
            if not _missing(row.get("audio")):
                data = row["audio"]
                if not isinstance(data, bytes | bytearray):
                    raise _bad(f"row {i}, column 'audio': expected the file's bytes "
                               f"(base64 over REST), got {type(data).__name__}")
                samples = audio.decode(bytes(data), s.sample_rate)
                if len(samples) > MAX_SECONDS * s.sample_rate:
                    raise _bad(f"row {i}, column 'audio': longer than the {MAX_SECONDS:g} s "
                               "limit")
                where = "audio"
            elif not _missing(row.get("samples")) and np.size(row.get("samples")):
                samples, where = self._samples(row, i), "samples"
            else:
                raise _bad(f"row {i}: send 'audio' (the file's bytes) or 'samples' with "
                           "'sample_rate'")
        except audio.AudioError as err:
            raise _bad(f"row {i}, column 'audio': "
                       f"{str(err).removeprefix('audio bytes: ')}") from None
        why = audio.problem(samples, s)
        if why:
            raise _bad(f"row {i}, column '{where}': {why}")
        x = audio.frames(samples, s)
        return self.norm.transform(x) if self.norm else audio.utterance_cmvn(x)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if len(frame) == 0:
            raise _bad("empty batch: send at least one row (one utterance)")
        if len(frame) > MAX_ROWS:
            raise _bad(f"request has {len(frame)} rows; the limit is {MAX_ROWS} utterances")
        rows = frame.to_dict("records")
        x, lengths = pad([self._features(r, i) for i, r in enumerate(rows)])
        ids = [str(i) if _missing(r.get("utterance_id")) else str(r["utterance_id"])
               for i, r in enumerate(rows)]
        if self.spec["task"] == "forecast":
            return self._forecast(x, lengths, ids)
        probs = torch.softmax(logits(self.net, x, lengths), dim=1).numpy().astype(np.float64)
        if not np.isfinite(probs).all():
            raise _bad("the model produced non-finite probabilities")
        classes = self.spec["classes"]
        best = probs.argmax(1)
        out = pd.DataFrame({"utterance_id": ids, "label": [classes[b] for b in best],
                            "probability": probs[np.arange(len(best)), best]})
        for j, c in enumerate(classes):
            out[f"p_{c}"] = probs[:, j]
        return out

    @torch.no_grad()
    def _forecast(self, x: torch.Tensor, lengths: torch.Tensor, ids: list[str]) -> pd.DataFrame:
        shift = self.spec["shift"]
        short = [i for i, n in enumerate(lengths.tolist()) if n <= shift]
        if short:
            raise _bad(f"row {short[0]}: {int(lengths[short[0]])} frames leave nothing to "
                       f"predict {shift} frames ahead")
        self.net.eval()
        out, _ = self.net(x)
        hidden = self.net.top_hidden  # [N, T, H]
        l1, emb = [], []
        for i, n in enumerate(lengths.tolist()):
            l1.append(float((out[i, : n - shift] - x[i, shift:n]).abs().mean()))
            emb.append(hidden[i, :n].mean(0).double().tolist())
        if not np.isfinite(l1).all() or not np.isfinite(np.concatenate(emb)).all():
            raise _bad("the model produced a non-finite error or embedding")
        return pd.DataFrame({"utterance_id": ids, "l1": l1, "embedding": emb})


def signature(spec: dict) -> ModelSignature:
    inputs = Schema([ColSpec(DataType.binary, "audio", required=False),
                     ColSpec(Array(DataType.double), "samples", required=False),
                     ColSpec(DataType.long, "sample_rate", required=False),
                     ColSpec(DataType.string, "utterance_id", required=False)])
    outputs = [ColSpec(DataType.string, "utterance_id")]
    if spec["task"] == "forecast":
        outputs += [ColSpec(DataType.double, "l1"), ColSpec(Array(DataType.double), "embedding")]
    else:
        outputs += [ColSpec(DataType.string, "label"), ColSpec(DataType.double, "probability")]
        outputs += [ColSpec(DataType.double, f"p_{c}") for c in spec["classes"]]
    return ModelSignature(inputs, Schema(outputs))


def log_speech_model(net: torch.nn.Module, spec: dict, norm: Normaliser | None,
                     example_file: Path):
    """Log the pyfunc into the active run, with a real file as the input example."""
    import tempfile

    example = pd.DataFrame([{"audio": example_file.read_bytes(),
                             "utterance_id": example_file.stem}])
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = write_artifacts(Path(tmp), net, spec, norm.to_dict() if norm else {})
        return log_pyfunc(SpeechModel, "speech_entry.py", artifacts, signature(spec), example)
